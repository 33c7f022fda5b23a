"""The published checkpoint files the launch scripts name, where each comes from, and the one-line error for a
weights file that is not there (checked before a run builds anything)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Released:
    """A published weights file: what it is, where to get it, which command reads it."""

    what: str
    source: str
    used_by: str


FINE_REPO = "https://github.com/Seun9wan/Fashion-FINE"
RELEASED: dict[str, Released] = {
    "pt_checkpoint.pth": Released(
        "the authors' initialisation for Fashion-FINE pretraining",
        "https://drive.google.com/file/d/16kxbK7u86jVUfkwM7_4q2lJhCYeutgRv/view (put it in checkpoint_pretrain/)",
        "pt.sh"),
    "checkpoint_cmr_best_ft.pth": Released(
        "the released Fashion-FINE cross-modal retrieval model",
        "https://drive.google.com/file/d/1IRAs-UG8cwtogEWPYLFetyG8jJ-7mJuz/view", "eval_cmr.sh"),
    "checkpoint_tgir_best_ft.pth": Released(
        "the released Fashion-FINE text-guided image retrieval model",
        "https://drive.google.com/file/d/1e5tF-QWM2RZa5W4My7SdiOJF2jl3sydN/view", "eval_tgir.sh"),
    "model_base.pth": Released(
        "the BLIP base checkpoint (Salesforce)",
        "https://storage.googleapis.com/sfr-vision-language-research/BLIP/models/model_base.pth",
        "fashionfine_blip.sh (stage 1)"),
    "fashionfine_blip_3modules.pth": Released(
        "the released Fashion-FINE on BLIP model",
        "https://drive.google.com/file/d/1rjQXvixkCYwOgC2QcjrQMRIhFxLR0IA4/view", "eval_fashionfine_blip.sh"),
}
OUR_OUTPUTS = {
    "checkpoint_best.pth": "the best checkpoint of a training run in that folder (written when its selection "
                           "metric improves)",
    "checkpoint_last.pth": "the last checkpoint of a training run in that folder (written at every epoch end)",
    "checkpoint.pth.tar": "the last checkpoint of an ASEN++ run (runs/<NAME>/)",
    "model_best.pth.tar": "the best checkpoint of an ASEN++ run (runs/<NAME>/)",
}


def missing_weights_message(path: str | Path, flag: str) -> str:
    """`<flag> file not found: <path>` and where such a file comes from."""
    name = Path(path).name
    head = f"{flag} file not found: {path}"
    if name in RELEASED:
        r = RELEASED[name]
        return f"{head}; it is {r.what}: download it from {r.source} (README, 'Released checkpoints')"
    if name in OUR_OUTPUTS:
        return f"{head}; it would be {OUR_OUTPUTS[name]}: train first, or point {flag} at an existing file"
    if "_epoch" in name or name.startswith("checkpoint_"):
        return f"{head}; point {flag} at a checkpoint a training run wrote (e.g. OUT/checkpoint_best.pth)"
    return f"{head}; point {flag} at an existing weights file (README, 'Released checkpoints')"


def check_weights_exist(path: str | Path | None, flag: str) -> None:
    """FileNotFoundError with `missing_weights_message` when `path` is given but is not a file."""
    if path and not Path(path).is_file():
        raise FileNotFoundError(missing_weights_message(path, flag))
