"""The names and defaults a user types (methods, heads, poolings, schemas), as plain constants.

One definition for the library and the command line: comparison, heads, embed, evaluate, cohorts and text_encoder
import their constants from here, and the parser reads them without importing those modules (and with them
torch, scikit-learn, pandas or pyarrow), so that ``omop-behrt --help`` starts at once and the choices it shows
can never drift from the ones the library accepts. Nothing but constants: this module imports nothing.
"""

#: the names a user types (``--methods``), in the order the table shows them
METHODS = ("embeddings-lr", "counts-lr", "counts-gbm", "embeddings-counts", "finetuned-pretrained",
           "finetuned-scratch")
#: the text encoder's methods: asked for by name only (they load a language model), never in the default set
TEXT_METHODS = ("text-lr", "text-counts", "text-behrt")
#: every name ``--methods`` takes
ALL_METHODS = METHODS + TEXT_METHODS
#: the methods with a few-shot curve (the others are refits of these with other features)
FEW_SHOT_METHODS = ("embeddings-lr", "counts-lr", "finetuned-pretrained", "finetuned-scratch", "text-lr")
#: the methods that train a torch model (the slow ones)
TORCH_METHODS = ("finetuned-pretrained", "finetuned-scratch")
#: vectors ⊕ counts: LR and GBM both fitted on the training rows, the better on the validation rows kept
CHOICE_METHODS = ("embeddings-counts", "text-counts")
#: the methods ``omop-behrt benchmark`` runs unless --methods names others (no fine-tuning: minutes, not hours)
BENCHMARK_METHODS = ("counts-lr", "counts-gbm", "embeddings-lr", "embeddings-counts")

#: prediction heads on the BEHRT encoder (``finetune --head``)
HEADS = ("ffn", "gru", "linear")
#: one BEHRT vector per person: the pooled [CLS] token, the mean over all tokens, the mean over the last visit's
POOLINGS = ("cls", "mean", "last_visit")
#: pooling of a Hugging Face text model (``embed --text-pooling``)
TEXT_POOLINGS = ("mean", "cls", "last")
#: few-shot curves: fractions of the training labels fitted on
FRACTIONS = (0.01, 0.05, 0.1, 0.25, 1.0)

#: Where cohort tables are written and read unless a results schema is named (OHDSI's convention), for
#: every stage: cohort building, extract --cohort-id, embed, task.
RESULTS_SCHEMA = "results"


def comma_floats(s: str) -> list[float]:
    """A command-line list of numbers (``0.01,0.1,1``), for the parsers that take fractions."""
    return [float(x) for x in s.split(",") if x.strip()]
