"""`phi-ray serve` from an object-store run (moto's S3 server): the driver checks the model
and classifier directories by listing them, and a model replica loads this node's one local
copy (``train.data.localize``), as train and evaluate do. The whole path, on a 3-node
cluster through Serve and the openai client, is in ``make rehearse``."""

from __future__ import annotations

import pyarrow.fs as pafs
import pytest
from s3_server import S3Server

from phi_ray.config import load_config
from phi_ray.model.phi import build_model
from phi_ray.model.tokenizer import get_tokenizer
from phi_ray.serving.app import check_classifier_dir, check_model_dir
from phi_ray.serving.deployments import _load_engine
from phi_ray.train.data import CACHE_ENV, localize

BUCKET = "phi"


@pytest.fixture(scope="module")
def s3_model(tmp_path_factory):
    """A tiny exported model at s3://phi/run/finetune/model, and copies missing a piece."""
    local = tmp_path_factory.mktemp("model")
    build_model(load_config("tiny").model, seed=0).save_pretrained(local)
    get_tokenizer().save_pretrained(local)
    with S3Server(tmp_path_factory.mktemp("moto") / "moto.log") as server:
        server.create_bucket(BUCKET)
        with server.env_applied():
            fs, _ = pafs.FileSystem.from_uri(f"s3://{BUCKET}")
            names = [p.name for p in local.iterdir()]
            for prefix, skip in (
                ("run/finetune/model", None),
                ("notok/model", "tokenizer_config.json"),
                ("noweights/model", "model.safetensors"),
            ):
                for name in names:
                    if name != skip:
                        pafs.copy_files(
                            str(local / name),
                            f"{BUCKET}/{prefix}/{name}",
                            source_filesystem=pafs.LocalFileSystem(),
                            destination_filesystem=fs,
                        )
            yield f"s3://{BUCKET}"


def test_an_object_store_model_is_checked_remotely_and_loaded_from_the_nodes_copy(
    s3_model, tmp_path, monkeypatch
):
    uri = f"{s3_model}/run/finetune/model"
    cache = tmp_path / "node-cache"
    monkeypatch.setenv(CACHE_ENV, str(cache))
    # The driver only lists: it keeps the URI (each replica copies on its own node).
    assert check_model_dir(uri + "/") == uri
    assert not cache.exists()
    engine = _load_engine(uri, "transformers", "cpu")
    copies = [p for p in cache.iterdir() if not p.name.startswith(".")]
    assert len(copies) == 1 and (copies[0] / "config.json").is_file()
    assert engine.model.config.hidden_size == load_config("tiny").model.hidden_size
    # Another replica on the node (the ingress, for the tokenizer) reuses the copy.
    assert localize(uri) == str(copies[0])


@pytest.mark.parametrize(
    "prefix, says",
    [
        ("notok/model", r"no tokenizer_config\.json"),
        ("noweights/model", "has no weights"),
        ("nothing/here", "is not a directory"),
    ],
)
def test_an_incomplete_object_store_model_is_refused_before_deploying(s3_model, prefix, says):
    with pytest.raises(FileNotFoundError, match=says):
        check_model_dir(f"{s3_model}/{prefix}")


def test_an_object_store_classifier_needs_its_model_file(s3_model):
    with pytest.raises(FileNotFoundError, match=r"no model\.joblib"):
        check_classifier_dir(f"{s3_model}/run/finetune/model")
