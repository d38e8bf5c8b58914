"""Patient vectors as of an index date: the embedding run and the tables it writes."""
