"""Bad options get one clear line before any work: counts that must be >= 1, ``--exact`` where it means nothing,
malformed ``spark://`` URLs (checked before a JVM starts)."""
from __future__ import annotations

import pytest

from omop_behrt.cli.main import main
from omop_behrt.db.database import SourceError


def _usage_error(argv: list[str], capsys) -> str:
    """The argparse error of ``argv`` (exit code 2), as the user sees it."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("option,value", [("--chunk-persons", "0"), ("--chunk-persons", "-5"),
                                          ("--batch-tokens", "0"), ("--chunk-persons", "many")])
def test_embed_counts_must_be_positive(option, value, capsys, tmp_path):
    err = _usage_error(["embed", "--source", str(tmp_path), "--model", str(tmp_path), "--cohort", "c.csv",
                        "--out", str(tmp_path / "o.parquet"), option, value], capsys)
    assert f"argument {option}: expected a whole number >= 1" in err and value.lstrip("-") in err


@pytest.mark.parametrize("option", ["--chunk-persons", "--epochs", "--max-len", "--checkpoint-every", "--threads"])
def test_pretrain_counts_must_be_positive(option, capsys, tmp_path):
    err = _usage_error(["pretrain", "--events", str(tmp_path), "--out", str(tmp_path / "m"), option, "0"], capsys)
    assert f"argument {option}: expected a whole number >= 1, got 0" in err


def test_exact_is_refused_for_the_text_encoder(capsys, tmp_path):
    (tmp_path / "c.csv").write_text("subject_id,index_date\n1,2010-01-01\n")
    rc = main(["embed", "--source", str(tmp_path), "--encoder", "text", "--cohort", str(tmp_path / "c.csv"),
               "--out", str(tmp_path / "o.parquet"), "--exact", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "--exact is for --encoder behrt" in err
    assert not (tmp_path / "o.parquet").exists()


@pytest.mark.parametrize("url,expected", [
    ("spark://local[0]?database=cdm", "master 'local[0]' is neither local"),
    ("spark://local[two]", "master 'local[two]' is neither local"),
    ("spark://my host:7077", "master 'my host:7077'"),
    ("spark://local[2]?database=cdm;drop", "invalid Spark database name 'cdm;drop'"),
    ("spark://local[2]?partitions=0", "partitions must be a whole number >= 1, got '0'"),
    ("spark://local[2]?partitions=x", "partitions must be a whole number >= 1, got 'x'"),
    ("spark://local[2]?driver_memory=lots", "driver_memory must be like 512m or 2g, got 'lots'"),
    ("spark://local[2]?parquet=/no/such/folder", "parquet folder /no/such/folder does not exist"),
    ("spark://local[2]?datbase=cdm", "unknown option(s) datbase"),
])
def test_malformed_spark_urls(url, expected):
    pytest.importorskip("pyspark", reason="the spark extra (omop-behrt[spark]) is not installed")
    from omop_behrt.db.spark import SparkDatabase
    with pytest.raises(SourceError) as e:
        SparkDatabase.from_url(url)
    assert expected in str(e.value) and url in str(e.value)


def test_malformed_spark_url_from_the_cli(capsys, tmp_path):
    pytest.importorskip("pyspark", reason="the spark extra (omop-behrt[spark]) is not installed")
    rc = main(["extract", "--source", "spark://local[2]?partitions=0", "--out", str(tmp_path / "ev"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "partitions must be a whole number >= 1" in err
    assert not (tmp_path / "ev" / "manifest.json").exists()
