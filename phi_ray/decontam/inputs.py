"""The pipeline datasets decontamination reads, and the columns their text comes from."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow.dataset as pads
import pyarrow.fs as pafs

from phi_ray.runs import RunDir

# name -> (stage, sub-directory) of the pipeline datasets (see DESIGN.md's contracts).
ALIASES = {
    "exercises": ("synth", "exercises"),
    "textbooks": ("synth", "textbooks"),
    "filtered": ("score", "filtered"),
    "corpus": ("ingest", "corpus"),
}
EXERCISE_COLUMNS = ["prompt", "completion"]  # signature + docstring, then the body
CONTENT_COLUMNS = ["content"]


class DatasetError(ValueError):
    """A dataset that is missing, empty, or lacks the columns decontamination needs."""


@dataclass(frozen=True)
class InputDataset:
    name: str  # output folder name: "exercises", "textbooks", ...
    stage: str  # the upstream stage that wrote it
    path: str  # local path or URI, as Ray Data reads it
    text_columns: list[str]  # concatenated, in order, into the text that is compared

    @property
    def columns(self) -> list[str]:
        return ["id", *self.text_columns]


def _split(name: str) -> tuple[str, str]:
    if name in ALIASES:
        return ALIASES[name]
    stage, _, sub = name.partition("/")
    if not stage or not sub or "/" in sub:
        raise DatasetError(
            f"decontam.datasets: {name!r} is neither one of {sorted(ALIASES)} nor '<stage>/<dir>'"
        )
    return stage, sub


def resolve(run: RunDir, name: str) -> InputDataset:
    """The dataset's path and text columns; a clear error when it cannot be used."""
    stage, sub = _split(name)
    run.require(stage, needed_by=f"decontam (dataset {name!r})")
    path = run.path(stage, sub)
    fs_path = run._fs_path(path)
    if run.fs.get_file_info(fs_path).type == pafs.FileType.NotFound:
        raise DatasetError(f"dataset {name!r}: {path} does not exist")
    try:
        ds = pads.dataset(fs_path, filesystem=run.fs, format="parquet")
        have = set(ds.schema.names)
        n_files = len(ds.files)
    except (OSError, ValueError) as e:
        raise DatasetError(f"dataset {name!r} ({path}): not readable as Parquet: {e}") from None
    if n_files == 0:
        raise DatasetError(f"dataset {name!r}: no Parquet files under {path}")
    if name == "exercises" or (name not in ALIASES and set(EXERCISE_COLUMNS) <= have):
        want = EXERCISE_COLUMNS
    else:
        want = CONTENT_COLUMNS
    missing = [c for c in ["id", *want] if c not in have]
    if missing:
        raise DatasetError(
            f"dataset {name!r} ({path}): missing column(s) {missing}; it has {sorted(have)}"
        )
    return InputDataset(name=sub, stage=stage, path=path, text_columns=want)
