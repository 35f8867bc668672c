"""Train helpful-only, harmless-only and mixed reward models on HH-RLHF (paper §2.1–2.2, App. A.2).

    python experiments/train.py --model tiny-gpt2 --data-dir data/demo/hh-rlhf --max-length 256
    python experiments/train.py --model smollm2-135m-instruct-q4 --objective harmless \\
        --data-dir ../shared/data/hh-rlhf --train-split test --eval-fraction 0.2 --max-pairs 600
    python experiments/train.py --model gpt2-medium --seed 0 --seed 1 --seed 2        # the hub, paper setup
    accelerate launch experiments/train.py --model smollm2-360m                       # several GPUs
    python experiments/train.py --model gpt2-medium --seed 0 --seed 1 --seed 2 --shard 1/3   # job 1 of 3 (SLURM)
    python experiments/train.py --model smollm2-135m-instruct-q4 --objective mixed --template chat \\
        --data-dir ../shared/data/hh-rlhf --train-split test --max-pairs 400      # through its chat template

Writes <runs-dir>/<model>/<objective>/seed<k>/{rm/, train.json}. An interrupted run resumes from its
last checkpoint (<run>/checkpoint/) when started again with the same options; a checkpoint made with other
training options is refused (--force deletes it and starts over).
Then, over every requested RM that is trained, <results-dir>/<model>/train/: heldout.csv/.md (held-out accuracy
with a 95 % bootstrap interval over the pairs, chance 0.5), fig_loss.png (the loss curves), report_section.md
and run.json; and <results-dir>/<model>/report.md.
"""
import contextlib
import dataclasses
import math
import random
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import click
import numpy
import torch
from accelerate import Accelerator, PartialState
from transformers import get_linear_schedule_with_warmup

import common


@common.step()
@common.rm_options
@common.hh_data_options
@common.template_option("hh")
@click.option("--max-eval-pairs", type=click.IntRange(min=1), default=500, help="Cap on held-out pairs.")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Default: 2 single-objective, 1 mixed.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-4, help="Peak learning rate.")
@common.compute_options
@common.micro_batch_option
@click.option("--save-every", type=click.IntRange(min=1), default=50, help="Checkpoint every N optimizer steps.")
@click.option("--max-steps", type=click.IntRange(min=1), default=None,
              help="Stop after N optimizer steps, keeping the checkpoint (run again to continue).")
@click.option("--force", is_flag=True,
              help="Retrain even if the RM is already trained; delete a checkpoint made with other training options "
                   "and start over (a checkpoint made with the same options is still resumed).")
@common.results_option
def main(**cfg):
    device, dtype = common.start_step(cfg)
    state = PartialState(cpu=device.type == "cpu")  # the processes of accelerate launch meet before the first lock
    common.shard_map(lambda key: train_one(cfg, *key, device, dtype),
                     [(o, s) for o in cfg["objective"] for s in cfg["seed"]], cfg["shard"])
    if common.shard_done(cfg, "train.py"):
        return
    if state.is_main_process:
        with common.rank_zero_alone():
            write_results(cfg, common.step_dir(cfg["results_dir"], cfg["model"], "train"))


class BradleyTerry(torch.nn.Module):
    """Rewards of chosen and rejected transcripts, computed inside forward() so DDP can sync the gradients.

    A chosen and a rejected transcript share their dialogue up to the final answer (a third of all tokens
    on HH-RLHF harmless-base), so that common token prefix runs once and both answers continue from its
    key/value cache. It is the same computation as two full forwards (same positions, same attention),
    only without the repeated prefix.
    """

    def __init__(self, rm, pad_id):
        super().__init__()
        self.rm = rm
        self.pad_id = pad_id

    def forward(self, chosen, rejected):
        device = self.rm.device
        prefix = [shared_prefix_length(c, r) for c, r in zip(chosen, rejected)]
        if min(prefix) == 0:  # nothing to share for some pair: plain forward of all transcripts
            input_ids, mask = common.pad_batch(chosen + rejected, self.pad_id)
            scores = common.rewards(self.rm, input_ids.to(device), mask.to(device))
            return scores[:len(chosen)], scores[len(chosen):]
        prefix_ids, prefix_mask = common.pad_batch([c[:k] for c, k in zip(chosen, prefix)], self.pad_id)
        cache = self.rm.base_model(input_ids=prefix_ids.to(device), attention_mask=prefix_mask.to(device),
                                   use_cache=True).past_key_values
        cache.batch_repeat_interleave(2)  # rows: pair 0 chosen, pair 0 rejected, pair 1 chosen, ...
        answers = [seq[k:] for c, r, k in zip(chosen, rejected, prefix) for seq in (c, r)]
        answer_ids, answer_mask = common.pad_batch(answers, self.pad_id)
        # The prefix's padding stays masked in the middle; positions continue from each real prefix length.
        mask = torch.cat([prefix_mask.repeat_interleave(2, dim=0), answer_mask], dim=1).to(device)
        positions = torch.tensor(prefix).repeat_interleave(2)[:, None] + torch.arange(answer_ids.shape[1])
        hidden = self.rm.base_model(input_ids=answer_ids.to(device), attention_mask=mask,
                                    position_ids=positions.to(device), past_key_values=cache).last_hidden_state
        last = answer_mask.sum(dim=1).to(device) - 1
        scores = self.rm.score(hidden[torch.arange(hidden.shape[0], device=device), last]).squeeze(-1).float()
        return scores[0::2], scores[1::2]


def shared_prefix_length(a, b):
    """Tokens two sequences share at the start, leaving at least one token of each to read the reward at."""
    limit = min(len(a), len(b)) - 1
    n = 0
    while n < limit and a[n] == b[n]:
        n += 1
    return n


def length_grouped_batches(lengths, batch_size: int, seed: int, group: int = 50) -> list[list[int]]:
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


def optimizer_batches(lengths, batch_size, epochs, seed):
    """Every optimizer step of the run: pair indices of similar length."""
    return [batch for epoch in range(epochs)
            for batch in length_grouped_batches(lengths, batch_size, seed=seed * 1000 + epoch)]


def pair_shapes(chosen_ids, rejected_ids):
    """Per pair, the shared prefix and the longer answer after it, in tokens."""
    prefix = [shared_prefix_length(c, r) for c, r in zip(chosen_ids, rejected_ids)]
    answer = [max(len(c), len(r)) - k for c, r, k in zip(chosen_ids, rejected_ids, prefix)]
    return prefix, answer


def forward_tokens(pairs, prefix, answer):
    """Padded tokens that one BradleyTerry forward of these pairs computes."""
    if min(prefix[i] for i in pairs) == 0:  # the fallback: full chosen and rejected transcripts
        return 2 * len(pairs) * max(prefix[i] + answer[i] for i in pairs)
    return len(pairs) * (max(prefix[i] for i in pairs) + 2 * max(answer[i] for i in pairs))


def micro_batches(pairs, prefix, answer, token_budget):
    """Cut pairs, in the given order, into forwards of at most `token_budget` computed tokens (at least one
    pair each). The order decides the padding, so callers sort first."""
    micros, current = [], []
    for i in pairs:
        if current and forward_tokens(current + [i], prefix, answer) > token_budget:
            micros.append(current)
            current = []
        current.append(i)
    return micros + [current] if current else micros


# A checkpoint records common.TRAINING_OPTIONS resolved, with the pairs' fingerprint in place of --data-dir, and
# resumes only under the same ones; --micro-batch-tokens (only the order of a sum), --save-every, --max-steps and
# --device may change.
PAIRS = "pairs_sha256"  # the training and held-out pairs' fingerprint, beside the options


@dataclasses.dataclass
class Data:
    train_pairs: list
    eval_pairs: list
    bad: common.BadRows
    fingerprint: str  # of both lists: what a trained RM and a checkpoint record in place of --data-dir


@dataclasses.dataclass
class Run:
    """One RM's training, built from the options and its data."""
    tokenizer: object
    chosen_ids: list
    rejected_ids: list
    prefix: list  # per training pair: tokens of the shared prefix
    answer: list  # per training pair: tokens of the longer answer after it
    steps: list  # every optimizer step of the run: the indices of its pairs
    net: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    epochs: int
    max_length: int
    token_budget: int
    options: dict  # common.TRAINING_OPTIONS, resolved


def train_one(cfg, objective, seed, device, dtype):
    out = common.rm_dir(cfg["runs_dir"], cfg["model"], objective, seed)
    tag = f"[{objective} seed {seed}]"
    data = load_data(cfg, objective, seed, tag)
    with common.unit_lock(out, cfg["shard"], f"{objective} seed {seed} training") as mine:
        if not mine:
            return
        if common.reuse(out / "train.json", trained_settings, trained_wanted(cfg, data), force=cfg["force"],
                        tag=tag + " ", redo="retraining"):
            click.echo(f"{tag} already trained: {out} (use --force to retrain)")
            return
        accelerator = Accelerator(mixed_precision="bf16" if dtype == torch.bfloat16 else "no", cpu=device.type == "cpu")
        run = build_run(cfg, objective, seed, dtype, data, accelerator)
        checkpoint = out / "checkpoint"
        progress = resume(accelerator, checkpoint, run, cfg["force"], tag)
        resumed_from = progress["step"]
        train_steps(accelerator, run, progress, checkpoint, cfg, f"train {objective} seed{seed}")
        if progress["step"] < len(run.steps):
            click.echo(f"{tag} stopped at step {progress['step']} of {len(run.steps)} (--max-steps); "
                       "run the same command again to continue")
            return
        if accelerator.is_main_process:
            # `options` as given on the command line: what a suggested command for a sibling RM repeats
            config = {**cfg, "objective": objective, "seed": seed, "dtype": str(dtype), "device": str(device),
                      "options": cfg, PAIRS: run.options[PAIRS]}
            with common.rank_zero_alone():
                evaluate_and_save(accelerator, run, data, progress, resumed_from, out, config, tag)
        accelerator.wait_for_everyone()


def load_data(cfg, objective, seed, tag) -> Data:
    """The training pairs (subsampled by seed) and the held-out pairs of an objective."""
    bad = common.BadRows()
    train_pairs, eval_pairs = common.load_hh(objective, cfg["data_dir"], cfg["train_split"], cfg["eval_split"],
                                             cfg["eval_fraction"], bad)
    click.echo(f"{tag} {bad.summary()}")
    train_pairs = common.subsample(train_pairs, cfg["max_pairs"], seed)
    eval_pairs = common.subsample(eval_pairs, cfg["max_eval_pairs"], 0)  # same held-out set for every seed
    if not train_pairs or not eval_pairs:
        raise common.RMTError(f"no usable {'training' if not train_pairs else 'held-out'} pairs for '{objective}' "
                              f"({bad.summary()})")
    return Data(train_pairs, eval_pairs, bad, common.pairs_fingerprint(train_pairs, eval_pairs))


def build_run(cfg, objective, seed, dtype, data: Data, accelerator) -> Run:
    """A fresh RM, its tokenized pairs, every optimizer step of the run, the optimizer and the schedule."""
    epochs = cfg["epochs"] or (1 if objective == "mixed" else 2)
    token_budget = common.token_budget(cfg["micro_batch_tokens"], accelerator.device)
    model, tokenizer = common.new_reward_model(cfg["model"], seed, cfg["template"])
    max_length = min(cfg["max_length"], common.context_length(model))  # GPT-2 has 1024 positions
    chosen_ids, rejected_ids = common.encode_pairs(tokenizer, data.train_pairs, max_length)
    prefix, answer = pair_shapes(chosen_ids, rejected_ids)
    steps = optimizer_batches([k + n for k, n in zip(prefix, answer)], cfg["batch_size"], epochs, seed)

    net = BradleyTerry(model, tokenizer.pad_token_id)
    optimizer = torch.optim.AdamW(net.parameters(), lr=cfg["lr"], fused=True)  # 5x faster step than the default
    scheduler = get_linear_schedule_with_warmup(optimizer, 0, len(steps))
    # The scheduler stays outside prepare(): accelerate's wrapper assumes a sharded dataloader and would step
    # it once per process, while `steps` already counts the optimizer steps of all processes together.
    net, optimizer = accelerator.prepare(net, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    return Run(tokenizer, chosen_ids, rejected_ids, prefix, answer, steps, net, optimizer, scheduler, epochs,
               max_length, token_budget, training_options(cfg, epochs, max_length, dtype, data))


def training_options(cfg, epochs: int, max_length: int, dtype: torch.dtype, data: Data) -> dict:
    """common.TRAINING_OPTIONS as they apply (the epochs, max length and dtype resolved) and the pairs' fingerprint."""
    options = {name: cfg[name] for name in common.TRAINING_OPTIONS}
    options.update(epochs=epochs, max_length=max_length, dtype=str(dtype).removeprefix("torch."))
    options[PAIRS] = data.fingerprint
    return options


def trained_settings(record: Path) -> dict:
    """What a trained RM's train.json records of the options as GIVEN (so that `auto` stays `auto` on another
    machine) and its pairs' fingerprint; Unreadable when the record cannot be read or the RM beside it cannot be
    used (no config.json, weights that changed since they were saved)."""
    problem = common.rm_problem(record.parent)
    if problem:
        raise common.Unreadable(problem)
    config, given = common.training_config(record.parent)
    return {**{name: given.get(name) for name in common.TRAINING_OPTIONS}, PAIRS: config.get(PAIRS)}


def trained_wanted(cfg, data: Data) -> dict:
    return {**{name: cfg[name] for name in common.TRAINING_OPTIONS}, PAIRS: data.fingerprint}


def resume(accelerator, checkpoint: Path, run: Run, force: bool, tag: str) -> dict:
    """The progress to continue from: the latest complete checkpoint, loaded into the prepared model, optimizer
    and scheduler, when it was made with the same options; otherwise a fresh start. A checkpoint made with
    other options is refused, or deleted with --force."""
    progress = {"step": 0, "loss_curve": [], "tokens": 0, "seconds": 0.0}
    found = latest_checkpoint(checkpoint)
    if found is None:
        return progress
    try:
        differences = common.stale_reason({"template": "hh", **common.read_json(found / "options.json")}, run.options,
                                          keys=run.options)  # checkpoints from before --template: HH transcripts
        saved = common.read_json(found / "progress.json")
    except common.Unreadable as err:
        differences = f"a record that cannot be read ({err})"
    if differences and not force:
        raise common.RMTError(f"{found} was made with other options: {differences}. Rerun with the checkpoint's "
                              "options to continue it, or pass --force to delete it and start over.")
    if differences:
        click.echo(f"{tag} --force: deleting {found} (made with other options: {differences}) and starting over")
        if accelerator.is_main_process:
            discard_checkpoint(checkpoint)
        accelerator.wait_for_everyone()
        return progress
    try:
        accelerator.load_state(str(found))
    except (OSError, RuntimeError, ValueError, KeyError) as err:  # its weights or optimizer state are damaged
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise common.RMTError(f"{found} cannot be loaded ({first}): delete it to start over") from None
    progress = saved
    note = f" (from {found.name}: the last save was cut short)" if found != checkpoint else ""
    click.echo(f"{tag} resuming from step {progress['step']} of {len(run.steps)}{note}")
    return progress


def train_steps(accelerator, run: Run, progress: dict, checkpoint: Path, cfg, desc: str):
    """The optimizer steps from `progress` up to the end (or --max-steps), checkpointing every --save-every
    steps and where it stops."""
    run.net.train()
    bar = common.progress(None, total=len(run.steps), initial=progress["step"], desc=desc, unit="step",
                          disable=not accelerator.is_main_process)
    stop_at = len(run.steps) if cfg["max_steps"] is None else min(len(run.steps), cfg["max_steps"])
    started = time.perf_counter()
    for step in range(progress["step"], stop_at):
        step_loss, tokens = train_step(accelerator, run, step)
        progress["tokens"] += tokens
        progress["loss_curve"].append(round(step_loss, 6))
        progress["step"] = step + 1
        bar.update(1)
        bar.set_postfix(loss=f"{step_loss:.4f}")
        if progress["step"] % cfg["save_every"] == 0 or progress["step"] == stop_at:
            progress["seconds"] += time.perf_counter() - started
            started = time.perf_counter()
            save_checkpoint(accelerator, checkpoint, progress, run.options)
    bar.close()


def train_step(accelerator, run: Run, step: int) -> tuple[float, int]:
    """One optimizer step: (the loss of the whole batch, over all processes; the tokens this process read)."""
    step_loss, tokens = 0.0, 0
    share = run.steps[step][accelerator.process_index::accelerator.num_processes]
    # On 600 real harmless-base pairs, cutting a batch sorted by total length computes 59 % more tokens
    # than the real ones, sorted by prefix length 35 %.
    micros = micro_batches(sorted(share, key=lambda i: -run.prefix[i]), run.prefix, run.answer, run.token_budget)
    for k, micro in enumerate(micros):
        # Gradients sync across processes once per step, on the last micro-batch; DDP then averages
        # the per-process means into the mean over the whole batch.
        sync = contextlib.nullcontext() if k == len(micros) - 1 else accelerator.no_sync(run.net)
        with sync, accelerator.autocast():
            chosen, rejected = run.net([run.chosen_ids[i] for i in micro], [run.rejected_ids[i] for i in micro])
            loss = common.bradley_terry_loss(chosen, rejected) / len(share)
            accelerator.backward(loss)
        step_loss += loss.item() * len(share) / len(run.steps[step])
        tokens += sum(len(run.chosen_ids[i]) + len(run.rejected_ids[i]) for i in micro)
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad()
    step_loss = ensure_finite(accelerator.reduce(torch.tensor(step_loss, device=accelerator.device), "sum").item(),
                              f"training loss at step {step + 1}")
    return step_loss, tokens


def evaluate_and_save(accelerator, run: Run, data: Data, progress: dict, resumed_from: int, out: Path,
                      config: dict, tag: str):
    """Held-out accuracy, then the RM and train.json; the checkpoint goes once both are saved. Main process only."""
    rm = accelerator.unwrap_model(run.net).rm
    with accelerator.autocast():
        accuracy = held_out_accuracy(BradleyTerry(rm, run.tokenizer.pad_token_id).eval(),
                                     *common.encode_pairs(run.tokenizer, data.eval_pairs, run.max_length),
                                     run.token_budget)
    metrics = {
        "eval_accuracy": accuracy, "eval_pairs": len(data.eval_pairs), "train_pairs": len(data.train_pairs),
        "epochs": run.epochs, "steps": len(run.steps), "resumed_from_step": resumed_from,
        "final_loss": sum(progress["loss_curve"][-10:]) / len(progress["loss_curve"][-10:]),
        "loss_curve": progress["loss_curve"], "train_seconds": round(progress["seconds"], 2),
        "train_tokens_per_second": round(progress["tokens"] * accelerator.num_processes
                                         / max(progress["seconds"], 1e-9), 1),
        "bad_rows": {"count": data.bad.total, "by_reason": data.bad.counts, "first": data.bad.examples},
    }
    save_rm(rm, run.tokenizer, out / "rm")
    common.write_json(out / "train.json", {**common.run_record(config), "metrics": metrics})
    discard_checkpoint(out / "checkpoint")
    click.echo(f"{tag} eval_accuracy {accuracy:.4f} on {len(data.eval_pairs)} held-out pairs → {out}")


@torch.no_grad()
def held_out_accuracy(net, chosen_ids, rejected_ids, token_budget) -> float:
    """Share of pairs whose chosen reward is strictly above the rejected one (ties are wrong, as in the paper)."""
    prefix, answer = pair_shapes(chosen_ids, rejected_ids)
    # Over hundreds of pairs, buckets of similar prefix sorted by answer pad least (on 456 held-out
    # harmless-base pairs: 32 % above the real tokens, against 62 % sorting by prefix alone).
    order = sorted(range(len(chosen_ids)), key=lambda i: (-(prefix[i] // 64), -answer[i]))
    correct = 0
    for micro in common.progress(micro_batches(order, prefix, answer, token_budget), desc="eval", unit="batch"):
        chosen, rejected = net([chosen_ids[i] for i in micro], [rejected_ids[i] for i in micro])
        correct += int((chosen > rejected).sum())
    return correct / len(chosen_ids)


def ensure_finite(value: float, what: str) -> float:
    if not math.isfinite(value):
        raise common.RMTError(f"{what} is {value}: stopping instead of saving a broken model "
                              "(try a lower --lr, or --dtype float32)")
    return value


def sibling(path: Path, suffix: str) -> Path:
    return path.with_name(f"{path.name}.{suffix}")


def latest_checkpoint(checkpoint: Path) -> Path | None:
    """The complete checkpoint to resume from: `checkpoint`, or `checkpoint.old` when a crash came between
    moving the old one aside and renaming the new one in. `checkpoint.tmp` is never used: it may be half-written."""
    for path in (checkpoint, sibling(checkpoint, "old")):
        if (path / "progress.json").is_file():
            return path
    return None


def save_checkpoint(accelerator, checkpoint: Path, progress: dict, options: dict):
    """Write the new checkpoint to `checkpoint.tmp` and swap it in by renames, keeping the old one until the new
    one is in place: at every moment a complete checkpoint exists (`checkpoint`, or `checkpoint.old` between
    the two renames), and latest_checkpoint finds it."""
    tmp, old = sibling(checkpoint, "tmp"), sibling(checkpoint, "old")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()  # save_state does not wait: every process's RNG state is in tmp before it moves
    if accelerator.is_main_process:
        with common.rank_zero_alone():
            common.write_json(tmp / "options.json", options)
            common.write_json(tmp / "progress.json", progress)  # last: a checkpoint with progress.json is complete
        if (checkpoint / "progress.json").is_file():
            shutil.rmtree(old, ignore_errors=True)
            checkpoint.rename(old)
        else:  # nothing complete there: a first save, or a run resumed from .old (kept until tmp is in place)
            shutil.rmtree(checkpoint, ignore_errors=True)
        tmp.rename(checkpoint)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def discard_checkpoint(checkpoint: Path):
    """Delete a checkpoint with its .old and .tmp, every progress.json first: a crash halfway never leaves a
    directory that looks complete."""
    paths = [checkpoint, sibling(checkpoint, "old"), sibling(checkpoint, "tmp")]
    for path in paths:
        (path / "progress.json").unlink(missing_ok=True)
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)


def save_rm(rm, tokenizer, target: Path):
    """Write the RM (safetensors, tokenizer, the weights' recorded hash) to `<target>.tmp`, give it the usual permissions,
    then rename it onto `target`."""
    tmp = sibling(target, "tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    rm.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    common.record_weights(tmp)
    common.share_permissions(tmp)  # transformers writes the safetensors owner-only (0600)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)


# ---------------------------------------------------------------------------------------------
# The report's training section, from what each train.json records.
# ---------------------------------------------------------------------------------------------
def write_results(cfg, out: Path):
    rows, curves = [], {}
    for objective in cfg["objective"]:
        for seed in cfg["seed"]:
            record = common.rm_dir(cfg["runs_dir"], cfg["model"], objective, seed) / "train.json"
            if not record.exists():  # stopped early (--max-steps): nothing to report yet
                continue
            metrics = common.read_json(record)["metrics"]
            pairs = metrics["eval_pairs"]
            correct = round(metrics["eval_accuracy"] * pairs)
            # Each held-out pair is right or wrong, so the pair outcomes are `correct` ones and the rest zeros.
            low, high = common.bootstrap_mean_ci(numpy.repeat([1.0, 0.0], [correct, pairs - correct]))
            rows.append({"objective": objective, "seed": seed, "train_pairs": metrics["train_pairs"],
                         "epochs": metrics["epochs"], "steps": metrics["steps"], "final_loss": metrics["final_loss"],
                         "eval_pairs": pairs, "accuracy": metrics["eval_accuracy"], "ci_low": low, "ci_high": high})
            curves[objective, seed] = metrics["loss_curve"]
    if not rows:
        return
    common.write_rows(out / "heldout", rows)
    plot_losses(cfg, curves, out / "fig_loss.png")
    common.write_text(out / "report_section.md", report_section(rows))
    common.write_json(out / "run.json", common.run_record(cfg))
    report = common.write_report(cfg["results_dir"], cfg["model"])
    click.echo(f"held-out table and loss curves → {out}; report: {report}")


def plot_losses(cfg, curves, path):
    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.4))
    for (objective, seed), curve in curves.items():
        ax.plot(range(1, len(curve) + 1), curve, color=common.RM_COLORS[objective], alpha=0.8,
                label=f"{objective} RM, seed {seed}")
    ax.axhline(math.log(2), color="black", linestyle="--", linewidth=1, label="log 2 (an untrained RM)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("Bradley–Terry loss (batch)")
    ax.legend(fontsize=8)
    ax.set_title(f"{cfg['model']}: training loss")
    common.save_figure(fig, path)


def report_section(rows) -> str:
    header = ["| RM | seed | train pairs | steps | held-out pairs | accuracy [95 % CI] |",
              "|---|---:|---:|---:|---:|---|"]
    table = "\n".join(header + [f"| {r['objective']} | {r['seed']} | {r['train_pairs']} | {r['steps']} | "
                                 f"{r['eval_pairs']} | {r['accuracy']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}] |"
                                 for r in rows])
    return ("## Training (§2.2)\n\n"
            "Held-out accuracy of each RM on the held-out HH-RLHF pairs of its own subsets (helpful: the three helpful "
            "subsets; mixed: all four): the share of pairs whose chosen transcript gets the higher reward (ties are "
            "wrong), chance 0.5; in brackets "
            f"{common.BOOTSTRAP_NOTE.replace('items', 'pairs')}. SPEC's reference on 600 harmless-base pairs, "
            "one epoch: 0.65 (lr 1e-4). Every row is in `train/heldout.csv`.\n\n"
            f"{table}\n\n![training loss](train/fig_loss.png)\n")


if __name__ == "__main__":
    main()
