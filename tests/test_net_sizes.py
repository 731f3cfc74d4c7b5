"""The named configurations of the Vision Transformer and the MLP-Mixer (``--net-size``)."""
from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from sparse_bnn.experiment.sections import NET_SIZES
from sparse_bnn.nets import NETS, net_from_config
from sparse_bnn.nets.base import nearest_divisor


def parameter_count(net) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(nnx.state(net, nnx.Param)))


def test_the_cli_names_every_size_of_both_architectures():
    assert set(NETS["vit"].SIZES) == set(NETS["mixer"].SIZES) == set(NET_SIZES)


@pytest.mark.parametrize("size, preferred, expected", [(28, 7, 7), (28, 4, 4), (32, 7, 8), (32, 4, 4), (8, 7, 8),
                                                       (30, 4, 5), (30, 7, 6)])
def test_nearest_divisor(size, preferred, expected):
    assert nearest_divisor(size, preferred) == expected


# Parameter counts by hand, Fashion-MNIST (28 x 28 x 1, 10 classes).
def vit_parameters(patch, dim, depth, heads, hidden, image=28, channels=1, classes=10):
    tokens = (image // patch) ** 2
    embedding = (patch * patch * channels + 1) * dim + dim + (tokens + 1) * dim  # patches, class token, positions
    head_dim = dim // heads
    attention = 3 * (dim * heads * head_dim + heads * head_dim) + heads * head_dim * dim + dim
    mlp = dim * hidden + hidden + hidden * dim + dim
    block = attention + mlp + 2 * 2 * dim  # two layer norms
    return embedding + depth * block + 2 * dim + dim * classes + classes


def mixer_parameters(patch, dim, depth, token_hidden, channel_hidden, image=28, channels=1, classes=10):
    tokens = (image // patch) ** 2
    embedding = (patch * patch * channels + 1) * dim
    block = (tokens * token_hidden + token_hidden + token_hidden * tokens + tokens
             + dim * channel_hidden + channel_hidden + channel_hidden * dim + dim + 2 * 2 * dim)
    return embedding + depth * block + 2 * dim + dim * classes + classes


@pytest.mark.parametrize("size", NET_SIZES)
def test_named_sizes_have_the_documented_shapes_and_parameter_counts(size):
    vit = NETS["vit"].default_config((28, 28, 1), 10, size=size)
    spec = NETS["vit"].SIZES[size]
    assert (vit["patch_size"], vit["embed_dim"], vit["depth"]) == (spec["patch_size"], spec["embed_dim"], spec["depth"])
    assert vit["num_heads"] == [spec["num_heads"]] * spec["depth"]
    assert vit["mlp_hidden"] == [spec["mlp_hidden"]] * spec["depth"]
    assert parameter_count(net_from_config(vit)) == vit_parameters(
        spec["patch_size"], spec["embed_dim"], spec["depth"], spec["num_heads"], spec["mlp_hidden"])
    mixer = NETS["mixer"].default_config((28, 28, 1), 10, size=size)
    spec = NETS["mixer"].SIZES[size]
    assert mixer["token_hidden"] == [spec["token_hidden"]] * spec["depth"]
    assert mixer["channel_hidden"] == [spec["channel_hidden"]] * spec["depth"]
    assert parameter_count(net_from_config(mixer)) == mixer_parameters(
        spec["patch_size"], spec["embed_dim"], spec["depth"], spec["token_hidden"], spec["channel_hidden"])


def test_default_size_is_tiny_and_patches_fit_other_images():
    assert NETS["vit"].default_config((28, 28, 1), 10) == NETS["vit"].default_config((28, 28, 1), 10, size="tiny")
    cifar = NETS["mixer"].default_config((32, 32, 3), 10, size="tiny")
    assert cifar["patch_size"] == 8 and cifar["in_channels"] == 3
    with pytest.raises(ValueError, match="no size 'huge'"):
        NETS["vit"].default_config((28, 28, 1), 10, size="huge")


def test_net_size_from_the_command_line_reaches_the_run_network(tmp_path):
    """``fit --net vit --net-size tiny`` on 8 x 8 images: the run's network is the tiny ViT with
    patches of 8 (the divisor of 8 nearest 7)."""
    from sklearn.datasets import load_digits

    from sparse_bnn.cli import build_parser, config_from_args
    from sparse_bnn.data import load_dataset
    from sparse_bnn.experiment.run import net_config
    digits = load_digits()
    data = tmp_path / "digits.npz"
    np.savez(data, x=(digits.images[:, :, :, None] / 16.0).astype(np.float32), y=digits.target)
    config = config_from_args(build_parser().parse_args(
        ["fit", "--data", str(data), "--net", "vit", "--net-size", "small", "--out", str(tmp_path / "run")]))
    assert config.model.net_size == "small"
    config.check()
    dataset = load_dataset(str(data), n_train=64, n_test=32)
    built = net_config(config, dataset)
    spec = NETS["vit"].SIZES["small"]
    assert built == {**NETS["vit"].default_config((8, 8, 1), 10, size="small"), "net": "vit"}
    assert (built["patch_size"], built["embed_dim"], built["num_heads"]) == (4, spec["embed_dim"],
                                                                          [spec["num_heads"]] * spec["depth"])
