"""Sample text from a checkpoint or an exported model folder.

    python -m lrnn_lm.generate --ckpt runs/small/checkpoints/best.ckpt --prompt "ROMEO:" \
        [--max-new-tokens 200] [--temperature 0.8] [--top-k 50] [--top-p 0.95] [--seed 0]
    python -m lrnn_lm.generate --ckpt runs/small/checkpoints/best.ckpt --prompts-file prompts.txt   # one per line

The tokenizer is read from the checkpoint, so neither the dataset nor the cache is needed. Each prompt is the
start of a document: <|endoftext|> followed by the prompt's tokens, as in training, and its continuation ends at
the next <|endoftext|> (the end of the generated document) or after --max-new-tokens. One prompt is printed as its
tokens come; several (of any lengths, decoded as one batch) are printed each in full, in order. On a GPU the
decode step is replayed from a CUDA graph (--decoder eager for the plain step).
"""

from __future__ import annotations

import argparse
import codecs
import math
import sys
from pathlib import Path

from .cli import ArgumentParser, check_checkpoint_path, run_cli


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The arguments, checked before anything heavy loads."""
    parser = ArgumentParser(prog="python -m lrnn_lm.generate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True, help="a checkpoint written by train.py, or a folder of lrnn_lm.export")
    parser.add_argument("--prompt", action="append", help="text to continue (repeat for several; default: start a "
                                                          "new document)")
    parser.add_argument("--prompts-file", help="a UTF-8 file of prompts, one per line")
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=0.8, help="0: greedy")
    parser.add_argument("--top-k", type=int, default=50, help="sample among the k likeliest tokens (0: all)")
    parser.add_argument("--top-p", type=float, default=1.0, help="sample from the smallest set of likeliest tokens "
                                                                 "whose probabilities reach p (1: all)")
    parser.add_argument("--seed", type=int, help="make the sample reproducible")
    parser.add_argument("--decoder", choices=("auto", "eager", "graph"), default="auto",
                        help="graph: the decode step replayed from a CUDA graph (auto: on a GPU)")
    args = parser.parse_args(argv)
    check_checkpoint_path(args.ckpt)
    if args.max_new_tokens < 0:
        raise ValueError(f"--max-new-tokens: expected an integer >= 0, got {args.max_new_tokens}")
    if not math.isfinite(args.temperature) or args.temperature < 0:
        raise ValueError(f"--temperature: expected a finite number >= 0, got {args.temperature}")
    if args.top_k < 0:
        raise ValueError(f"--top-k: expected an integer >= 0 (0: all tokens), got {args.top_k}")
    if not 0 < args.top_p <= 1:
        raise ValueError(f"--top-p: expected a number in (0, 1], got {args.top_p}")
    if args.prompts_file is not None:
        if not Path(args.prompts_file).is_file():
            raise FileNotFoundError(f"--prompts-file: no such file: {args.prompts_file}")
        raw = Path(args.prompts_file).read_bytes()
        bom = codecs.BOM_UTF8 if raw.startswith(codecs.BOM_UTF8) else b""  # a leading byte-order mark is no text
        try:
            lines = raw[len(bom):].decode("utf-8").splitlines()
        except UnicodeDecodeError as e:
            raise ValueError(f"--prompts-file: not UTF-8: {args.prompts_file} (at byte {e.start + len(bom)})") from None
        args.prompt = (args.prompt or []) + [line for line in lines if line.strip()]
        if not args.prompt:
            raise ValueError(f"--prompts-file: no prompt in {args.prompts_file} (it has no non-empty line)")
    args.prompt = args.prompt or [""]
    return args


class StreamPrinter:
    """Prints one sequence's text as its tokens come (tokenizers' DecodeStream holds text back while it ends in an
    incomplete UTF-8 character: a byte-level token may hold part of one), up to its first EOS."""

    def __init__(self, tokenizer, eos_id: int, prefix: str):
        from tokenizers.decoders import DecodeStream

        self.tokenizer, self.eos_id, self.printed, self.done = tokenizer, eos_id, "", False
        self.stream = DecodeStream(skip_special_tokens=False)
        print(prefix, end="", flush=True)

    def __call__(self, token) -> None:
        token = int(token[0])
        if self.done or token == self.eos_id:
            self.done = True
            return
        text = self.stream.step(self.tokenizer, token)
        if text is not None:
            print(text, end="", flush=True)
            self.printed += text


def run(args: argparse.Namespace) -> list[str]:
    import torch

    from .pretrained import load_for_inference
    from .sampling import sample

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    module, tokenizer = load_for_inference(args.ckpt)
    model, eos_id = module.model.to(device).eval(), module.cfg.model.eos_id
    tokenizer.encode_special_tokens = True  # as in training: a literal "<|endoftext|>" is text
    prompts = [torch.tensor([eos_id, *tokenizer.encode(p).ids], device=device) for p in args.prompt]
    generator = None
    if args.seed is not None:
        torch.manual_seed(args.seed)  # every device's generator, the graph decoder's included
        generator = torch.Generator(device).manual_seed(args.seed)
    stream = StreamPrinter(tokenizer, eos_id, args.prompt[0]) if len(prompts) == 1 else None
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        new = sample(model, prompts, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k or None,
                     top_p=args.top_p, eos_id=eos_id, generator=generator, decoder=args.decoder, on_tokens=stream,
                     vocab_limit=tokenizer.get_vocab_size())  # ids past the tokenizer's have no text
    texts = []
    for prompt, row in zip(args.prompt, new.tolist()):
        if eos_id in row:
            row = row[: row.index(eos_id)]
        texts.append(prompt + tokenizer.decode(row))
    if stream is not None:
        print(texts[0][len(args.prompt[0]) + len(stream.printed):], flush=True)  # what was held back, and a newline
    else:
        for i, text in enumerate(texts):
            print(f"--- {i}\n{text}", flush=True)
    return texts


def main(argv: list[str] | None = None) -> None:
    run_cli(lambda: run(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
