"""Train a linear-RNN language model: `python train.py --config small.yaml [--section.field value ...]`.

`python train.py --help` lists every field; `--print_config` writes the resolved configuration as YAML.
"""

from lrnn_lm.cli import train_main

if __name__ == "__main__":
    train_main()
