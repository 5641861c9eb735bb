"""Train a linear-RNN language model: `python train.py --config small.yaml [--section.field value ...]`."""

from lrnn_lm.train import main

if __name__ == "__main__":
    main()
