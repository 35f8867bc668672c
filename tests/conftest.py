import json
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED_DATA = REPO.parent / "shared" / "data"

needs_shared = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is not beside the checkout")


def hh_row(prompt: str, chosen: str, rejected: str) -> dict:
    return {"chosen": f"\n\nHuman: {prompt}\n\nAssistant: {chosen}",
            "rejected": f"\n\nHuman: {prompt}\n\nAssistant: {rejected}"}


def write_hh(folder: Path, subset: str, split: str, rows: list) -> Path:
    path = folder / subset / f"{split}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture
def toy_hh(tmp_path) -> Path:
    """A learnable HH-RLHF-shaped folder: chosen answers are polite and on topic, rejected ones shout."""
    topics = ["cats", "rain", "bread", "maths", "trains", "music", "tea", "stars", "boats", "chess", "snow", "bees"]
    rows = [hh_row(f"Tell me about {t} #{i}", f"Sure, here is a calm note on {t}.", f"NO!!! {t.upper()} ???")
            for i in range(8) for t in topics]
    for subset in ("helpful-base", "helpful-online", "helpful-rejection-sampled", "harmless-base"):
        write_hh(tmp_path / "hh", subset, "test", rows)
    return tmp_path / "hh"


def save_tiny_rm(runs: Path, objective: str = "helpful", name: str = "tiny-gpt2", perturb_seed: int | None = None,
                 scale: float = 0.05) -> Path:
    """An untrained tiny RM saved where train.py would put it (seed 0); with `perturb_seed` its weights move off
    the base backbone by seeded noise, so RMs of different objectives differ and `change` scores are not zero."""
    import common

    model, tokenizer = common.new_reward_model(name, 0)
    if perturb_seed is not None:
        generator = torch.Generator().manual_seed(perturb_seed)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=generator) * scale)
    target = common.rm_dir(runs, name, objective, 0) / "rm"
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target
