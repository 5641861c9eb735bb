"""Perplexity and bits per byte of a checkpoint.

    python -m lrnn_lm.evaluate --ckpt runs/tiny/checkpoints/last.ckpt [--split validation|test|train]
    python -m lrnn_lm.evaluate --ckpt runs/tiny/checkpoints/last.ckpt --text-file F.txt
    python -m lrnn_lm.evaluate --ckpt runs/tiny/checkpoints/last.ckpt --seq-len 256   # shorter windows

Protocol. This is the code that computes validation during training and the final test numbers
(`LMDataModule.eval_dataloader` and `LitLM.test_step`):
1. The documents evaluated (a split's, or the whole --text-file as one document) are tokenized with the
   checkpoint's tokenizer, each opened by <|endoftext|>, and concatenated into one token stream.
2. The stream is cut into consecutive windows of seq_len + 1 tokens (seq_len from the checkpoint's config,
   or --seq-len, e.g. to compare models trained at different contexts on equal windows)
   that overlap by one token, so every token after the first is predicted exactly once, from the tokens
   before it in its window. The recurrent state starts from zero at each window (and is reset at every
   <|endoftext|>). The last window is shorter; it is evaluated, not dropped.
3. With NLL the summed negative log-likelihood in nats over all predicted tokens (including the
   <|endoftext|> that opens each document after the first), perplexity = exp(NLL / tokens) and
   bits per byte = NLL / (ln 2 · bytes), bytes being the UTF-8 bytes of the evaluated text. The predicted
   tokens stand for exactly those bytes (<|endoftext|> for none), so bits per byte does not depend on the
   tokenizer and compares across vocabularies.
Runs on one device: the GPU if there is one (in bf16-mixed when the config's precision is 'auto'), else the CPU.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .cli import ArgumentParser, check_checkpoint_path, run_cli


def evaluate(module, loader) -> dict[str, float | int]:
    """-> {loss, ppl, bpb, tokens, bytes} of `module` (a LitLM) over every batch of `loader`, on one device."""
    from dataclasses import replace

    import lightning as L

    from .train import resolve_precision

    if len(loader) == 0:  # Lightning would skip the loop and return no metrics
        raise ValueError("evaluate: expected text with at least one token to predict, got none (an empty text file "
                         "or split)")
    precision = resolve_precision(replace(module.cfg.trainer, accelerator="auto"))  # where this machine runs it
    trainer = L.Trainer(accelerator="auto", devices=1, precision=precision, logger=False,
                        enable_model_summary=False, enable_progress_bar=False)
    metrics = trainer.test(module, dataloaders=loader, verbose=False)[0]
    return {k: float(metrics[f"test/{k}"]) for k in ("loss", "ppl", "bpb")} | {
        k: int(metrics[f"test/{k}"]) for k in ("tokens", "bytes")}


def text_file_loader(path: str | Path, tokenizer, eos_id: int, seq_len: int, batch_size: int):
    """The windows of one UTF-8 text file, read verbatim as a single document."""
    import numpy as np
    from torch.utils.data import DataLoader

    from .data import TokenWindows, WindowCollator, encode_documents
    from .tokenizer import token_byte_lengths

    try:
        text = Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"--text-file: not UTF-8: {path} (at byte {e.start}); convert it to UTF-8") from None
    stream = np.asarray(encode_documents([text], tokenizer, eos_id)[0], dtype=np.int32)
    windows = TokenWindows(stream, seq_len, keep_tail=True)
    return DataLoader(windows, batch_size=batch_size, collate_fn=WindowCollator(eos_id, token_byte_lengths(tokenizer)))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The arguments, checked before anything heavy loads."""
    parser = ArgumentParser(prog="python -m lrnn_lm.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True, help="a checkpoint written by train.py, or a folder of lrnn_lm.export")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--split", choices=("validation", "test", "train"), default="validation",
                        help="a split of the checkpoint's data.source (default: validation)")
    source.add_argument("--text-file", help="evaluate this UTF-8 text file instead, as one document")
    parser.add_argument("--batch-size", type=int, help="windows per batch (default: the checkpoint's data.batch_size)")
    parser.add_argument("--seq-len", type=int,
                        help="tokens predicted per window (default: the checkpoint's data.seq_len)")
    args = parser.parse_args(argv)
    check_checkpoint_path(args.ckpt)
    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError(f"--batch-size: expected an integer >= 1, got {args.batch_size}")
    if args.seq_len is not None and args.seq_len < 2:
        raise ValueError(f"--seq-len: expected an integer >= 2, got {args.seq_len}")
    if args.text_file is not None and not Path(args.text_file).is_file():
        raise FileNotFoundError(f"--text-file: no such file: {args.text_file}")
    if args.text_file is None and Path(args.ckpt).is_dir():
        from .pretrained import RUN_CONFIG

        if not (Path(args.ckpt) / RUN_CONFIG).is_file():
                raise ValueError(f"--split: {args.ckpt} has no {RUN_CONFIG}, so the data the model was trained on is "
                             "unknown; score a text with --text-file F, or export the folder again")
    return args


def run(args: argparse.Namespace) -> dict:
    from dataclasses import replace

    from .data import LMDataModule
    from .pretrained import load_for_inference

    module, tokenizer = load_for_inference(args.ckpt)
    cfg = module.cfg
    given = {"seq_len": args.seq_len, "batch_size": args.batch_size}
    data_cfg = replace(cfg.data, **{k: v for k, v in given.items() if v is not None})
    batch_size = data_cfg.batch_size
    if args.text_file:
        loader = text_file_loader(args.text_file, tokenizer, cfg.model.eos_id, data_cfg.seq_len, batch_size)
    else:
        data = LMDataModule(data_cfg, cfg.model.vocab_size, cfg.model.eos_id, tokenizer=tokenizer)
        data.prepare_data()
        data.setup()
        loader = data.eval_dataloader(args.split, batch_size)
    result = {"evaluated": args.text_file or args.split, "ckpt": args.ckpt, "seq_len": data_cfg.seq_len,
              **evaluate(module, loader)}
    print(json.dumps(result, indent=2))
    return result


def main(argv: list[str] | None = None) -> None:
    run_cli(lambda: run(parse_args(argv)))


if __name__ == "__main__":
    main()
