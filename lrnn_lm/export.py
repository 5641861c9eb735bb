"""Export a checkpoint as a Hugging Face-style folder (see pretrained.py for what it holds).

    python -m lrnn_lm.export --ckpt runs/small/checkpoints/best.ckpt --out small-lrnn
"""

from __future__ import annotations

from pathlib import Path

from .cli import ArgumentParser, check_checkpoint_path, run_cli


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="python -m lrnn_lm.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True, help="a checkpoint written by train.py")
    parser.add_argument("--out", required=True, help="the folder to write (created; files in it are replaced)")

    def run() -> None:
        args = parser.parse_args(argv)
        check_checkpoint_path(args.ckpt)
        if Path(args.ckpt).is_dir():
            raise ValueError(f"--ckpt {args.ckpt}: already an exported folder; give a train.py checkpoint")
        if Path(args.out).exists() and not Path(args.out).is_dir():
            raise ValueError(f"--out {args.out}: a file, not a folder; choose another path")
        from .pretrained import export

        out = export(args.ckpt, args.out)
        print(f"wrote {out}: {', '.join(sorted(p.name for p in out.iterdir()))}")

    run_cli(run)


if __name__ == "__main__":
    main()
