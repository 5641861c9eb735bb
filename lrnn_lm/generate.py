"""Sample text from a checkpoint.

    python -m lrnn_lm.generate --ckpt runs/tiny/checkpoints/last.ckpt --prompt "ROMEO:" \
        [--max-new-tokens 200] [--temperature 0.8] [--top-k 50] [--seed 0]

The tokenizer is read from the checkpoint, so neither the dataset nor the cache is needed. The prompt is
the start of a document: <|endoftext|> followed by the prompt's tokens, as in training. The output is the
prompt and its continuation, cut at the next <|endoftext|> (the end of the generated document).
"""

from __future__ import annotations

import argparse

import torch

from .lit_module import load_checkpoint
from .sampling import sample


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lrnn_lm.generate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True, help="a checkpoint written by train.py")
    parser.add_argument("--prompt", default="", help="text to continue (default: start a new document)")
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top-k", type=int, default=50, help="sample among the k likeliest tokens (0: all)")
    parser.add_argument("--seed", type=int, help="make the sample reproducible")
    args = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    module, tokenizer = load_checkpoint(args.ckpt)
    model, eos_id = module.model.to(device).eval(), module.cfg.model.eos_id
    tokenizer.encode_special_tokens = True  # as in training: a literal "<|endoftext|>" is text
    prompt = torch.tensor([[eos_id, *tokenizer.encode(args.prompt).ids]], device=device)  # (1, T0)
    generator = None if args.seed is None else torch.Generator(device).manual_seed(args.seed)
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        tokens = sample(model, prompt, args.max_new_tokens, temperature=args.temperature,
                        top_k=args.top_k or None, generator=generator)  # (1, T0 + max_new_tokens)
    new = tokens[0, prompt.size(1):].tolist()
    if eos_id in new:
        new = new[: new.index(eos_id)]
    print(args.prompt + tokenizer.decode(new))


if __name__ == "__main__":
    main()
