"""Architectures: shapes, parameter counts, unit-layer declarations, compact == masked."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import jax
import jax.numpy as jnp
from flax import nnx

from sparse_bnn.compact import prune
from sparse_bnn.compact.keep import mask_params
from sparse_bnn.nets import NETS, net_from_config
from sparse_bnn.nets.base import FunctionalNet, flatten_paths, pure_params, unflatten_paths
from sparse_bnn.nets.lenet import LeNet5, LeNet5Caffe, max_pool
from sparse_bnn.nets.mlp import MLP
from sparse_bnn.nets.mixer import MLPMixer
from sparse_bnn.nets.resnet import ResNet, recompute_batch_stats
from sparse_bnn.nets.vit import VisionTransformer
from sparse_bnn.experiment.run import RunConfig, net_config

ARCHITECTURES = [LeNet5Caffe, LeNet5, ResNet, VisionTransformer, MLPMixer]


def n_params(net) -> int:
    return sum(int(np.prod(v.shape)) for v in flatten_paths(pure_params(net)).values())


def full_state(net) -> dict:
    """Every variable of the network (parameters and batch statistics) as ``{path: array}``."""
    return flatten_paths(nnx.to_pure_dict(nnx.state(net)))


def load_full_state(net, flat: dict) -> None:
    state = nnx.state(net)
    nnx.replace_by_pure_dict(state, unflatten_paths(flat))
    nnx.update(net, state)


def example_input(config: dict, batch: int = 3, seed: int = 0) -> jax.Array:
    shape = (batch, config["image_size"], config["image_size"], config["in_channels"])
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def randomise(net, seed: int) -> None:
    """Random values for every variable (positive variances), so nothing is trivially zero."""
    rng = np.random.default_rng(seed)
    out = {}
    for path, value in full_state(net).items():
        if path[-1] == "var":
            out[path] = rng.uniform(0.5, 2.0, size=value.shape)
        else:
            scale = 1.0 / np.sqrt(max(1, value.size // value.shape[-1])) if value.ndim > 1 else 0.5
            out[path] = scale * rng.normal(size=value.shape)
    load_full_state(net, {path: jnp.asarray(v, jnp.float32) for path, v in out.items()})


def random_keep(net, seed: int) -> dict[str, np.ndarray]:
    """A random keep mask per prunable layer, never empty and never full when avoidable."""
    rng = np.random.default_rng(seed)
    keep = {}
    for layer in net.unit_layers():
        if not layer.prunable:
            continue
        mask = rng.random(layer.units) < 0.6
        mask[rng.integers(layer.units)] = True
        if layer.units > 1 and mask.all():
            mask[rng.integers(layer.units)] = False
        keep[layer.name] = mask
    return keep


def masked_copy(net, keep):
    """The dense network with removed units' member entries zeroed (parameters only)."""
    masked = nnx.clone(net)
    params = flatten_paths(pure_params(masked))
    for layer in masked.unit_layers():
        if layer.name not in keep:
            continue
        mask = np.asarray(keep[layer.name], np.float32)
        for member in layer.members:
            if member.path in params:
                value = np.asarray(params[member.path])
                shape = [1] * value.ndim
                shape[member.axis] = mask.size
                params[member.path] = jnp.asarray(value * mask.reshape(shape))
    state = nnx.state(masked, nnx.Param)
    nnx.replace_by_pure_dict(state, unflatten_paths(params))
    nnx.update(masked, state)
    return masked


def _take_units(value, axis, interleave, index):
    value = np.asarray(value)
    axis = axis % value.ndim
    if interleave == 1:
        return np.take(value, index, axis=axis)
    shape = value.shape
    split = value.reshape(shape[:axis] + (interleave, shape[axis] // interleave) + shape[axis + 1:])
    kept = np.take(split, index, axis=axis + 1)
    return kept.reshape(shape[:axis] + (interleave * len(index),) + shape[axis + 1:])


def reference_compact(net, keep):
    """Independent of ``sparse_bnn.compact.prune``: slice members and consumers, rebuild from config."""
    cls = type(net)
    index = {name: np.flatnonzero(mask) for name, mask in keep.items()}
    config = cls.config_with_units(net.config, {name: len(i) for name, i in index.items()})
    small = cls.from_config(config, nnx.Rngs(1))
    flat = full_state(net)
    for layer in net.unit_layers():
        if layer.name not in index:
            continue
        for member in layer.members:
            flat[member.path] = _take_units(flat[member.path], member.axis, 1, index[layer.name])
        for consumer in layer.consumers:
            flat[consumer.path] = _take_units(flat[consumer.path], consumer.axis,
                                              consumer.interleave, index[layer.name])
    target = full_state(small)
    assert {p: v.shape for p, v in flat.items()} == {p: v.shape for p, v in target.items()}
    load_full_state(small, {path: jnp.asarray(v) for path, v in flat.items()})
    return small


def relative_error(a, b) -> float:
    return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


# ---------------------------------------------------------------- parameter counts by hand


def test_lenet5_caffe_parameter_count():
    net = LeNet5Caffe(rngs=nnx.Rngs(0))
    conv = (1 * 25 + 1) * 20 + (20 * 25 + 1) * 50
    dense = (800 + 1) * 800 + (800 + 1) * 500 + (500 + 1) * 10
    assert conv + dense == 1_071_880
    assert n_params(net) == 1_071_880
    assert net(jnp.zeros((2, 28, 28, 1))).shape == (2, 10)


def test_lenet5_caffe_cifar_input_flatten_size():
    net = LeNet5Caffe(image_size=32, in_channels=3, rngs=nnx.Rngs(0))
    # 32 -conv5-> 28 -pool-> 14 -conv5-> 10 -pool-> 5: 5 * 5 * 50 = 1250 features
    assert net.dense[0].kernel.shape == (1250, 800)
    assert net.unit_layers()[1].consumers[0].interleave == 25
    assert net(jnp.zeros((2, 32, 32, 3))).shape == (2, 10)


def test_mlp_parameter_count():
    net = MLP(784, (400, 400), 10, rngs=nnx.Rngs(0))
    assert n_params(net) == 785 * 400 + 401 * 400 + 401 * 10 == 478_410


@pytest.mark.parametrize("image_size,in_channels,first_padding", [(28, 1, "SAME"), (32, 3, "VALID")])
def test_lenet5_shapes_and_count(image_size, in_channels, first_padding):
    net = LeNet5(image_size=image_size, in_channels=in_channels, rngs=nnx.Rngs(0))
    assert net.conv_paddings[0] == first_padding
    assert net.feature_sizes == (14, 5, 1)
    expected = ((in_channels * 25 + 1) * 6 + (6 * 25 + 1) * 16 + (16 * 25 + 1) * 120
                + 121 * 84 + 85 * 10)
    assert n_params(net) == expected
    assert net(jnp.zeros((2, image_size, image_size, in_channels))).shape == (2, 10)


def resnet_count(depth, widths=(16, 32, 64), classes=10, in_channels=3):
    """Hand count: 3x3 convs without bias, BN scale+bias per channel, 1x1 conv + BN shortcuts."""
    n = (depth - 2) // 6
    count = in_channels * 9 * widths[0] + 2 * widths[0]
    for stage, w in enumerate(widths):
        for b in range(n):
            w_in = widths[stage - 1] if (stage > 0 and b == 0) else w
            count += w_in * 9 * w + 2 * w + w * 9 * w + 2 * w
            if stage > 0 and b == 0:
                count += w_in * w + 2 * w
    return count + widths[-1] * classes + classes


@pytest.mark.parametrize("depth", [20, 32])
def test_resnet_parameter_count(depth):
    net = nnx.eval_shape(lambda: ResNet(depth, rngs=nnx.Rngs(0)))  # shapes only, no arrays
    assert n_params(net) == resnet_count(depth)
    if depth == 20:
        assert abs(n_params(net) - 0.27e6) < 0.01e6  # the published "0.27M"
    assert sum(layer.name.startswith("block") for layer in net.unit_layers()) == 3 * (depth - 2) // 6
    assert ResNet.reference_sigma_0 == 0.2 and ResNet.reference_inclusion == 1e-4


# ---------------------------------------------------------------- protocol, for every net


@pytest.mark.parametrize("cls", ARCHITECTURES)
def test_registry_and_config_round_trip(cls):
    config = cls.example_config()
    assert NETS[config["net"]] is cls
    net = net_from_config(config, seed=0)
    assert isinstance(net, cls) and net.config == config
    rebuilt = nnx.eval_shape(lambda: cls.from_config(net.config, nnx.Rngs(5)))
    shapes = lambda n: {p: v.shape for p, v in full_state(n).items()}
    assert shapes(rebuilt) == shapes(net)
    x = example_input(config)
    assert net(x).shape == (x.shape[0], config["num_classes"])


@pytest.mark.parametrize("cls", ARCHITECTURES)
def test_unit_layers_consistent(cls):
    net = cls.from_config(cls.example_config(), nnx.Rngs(0))
    layers = net.unit_layers()
    state = full_state(net)
    params = flatten_paths(pure_params(net))
    names = [layer.name for layer in layers]
    assert len(set(names)) == len(names)
    assert [layer.prunable for layer in layers] == [True] * (len(layers) - 1) + [False]
    assert layers[-1].units == net.config["num_classes"] and not layers[-1].consumers
    owned = set()
    for layer in layers:
        assert layer.units > 0 and layer.fan_in > 0
        assert layer.inactive_output == 0.0
        for member in layer.members:
            assert member.path in state, (layer.name, member.path)
            assert member.interleave == 1
            assert state[member.path].shape[member.axis] == layer.units, (layer.name, member.path)
            assert (member.path, member.axis) not in owned, "a parameter axis owned twice"
            owned.add((member.path, member.axis))
        assert any(m.path in params for m in layer.members)
        for consumer in layer.consumers:
            assert consumer.path in params, (layer.name, consumer.path)
            size = params[consumer.path].shape[consumer.axis]
            assert consumer.interleave * layer.units == size, (layer.name, consumer.path)


def scale_governed_entries(net, layer_name: str, unit: int) -> int:
    """Entries of the effective parameters that SS-GL's ``tau2`` of one unit multiplies.

    Every ``w~`` is 1 and every ``tau2`` is 1 except the unit's, which is 0: the entries that
    come out zero are exactly the weights in the unit's group.
    """
    from sparse_bnn.core.model import SparseBNN
    from sparse_bnn.priors import get_prior

    bnn = SparseBNN(net, get_prior("ss-gl"), n_data=100)
    values = {bnn.weight_site(path): jnp.ones(shape) for path, shape in bnn.shapes.items()}
    for layer in bnn.layers:
        values[f"{layer.name}.z"] = jnp.ones(layer.units)
        values[f"{layer.name}.tau2"] = jnp.ones(layer.units).at[unit].set(
            0.0 if layer.name == layer_name else 1.0)
    return sum(int(np.sum(np.asarray(w) == 0.0)) for w in bnn.effective_params(values).values())


@pytest.mark.parametrize("cls", ARCHITECTURES + [MLP])
def test_group_size_counts_the_weights_a_unit_scale_multiplies(cls):
    if cls is MLP:
        net = MLP(5, (4, 3), 2, rngs=nnx.Rngs(0))
    else:
        net = cls.from_config(cls.example_config(), nnx.Rngs(0))
    for layer in net.unit_layers():
        for unit in {0, layer.units - 1}:
            assert layer.group_size == scale_governed_entries(net, layer.name, unit), (layer.name, unit)


def test_group_size_hand_counts():
    vit = VisionTransformer.from_config(VisionTransformer.example_config(), nnx.Rngs(0))
    d, head_dim = vit.embed_dim, vit.head_dim
    heads = {l.name: l for l in vit.unit_layers()}["block0_heads"]
    assert heads.group_size == 3 * (d * head_dim + head_dim)  # query, key, value kernels and biases

    resnet = ResNet.from_config(ResNet.example_config(), nnx.Rngs(0))
    layers = {l.name: l for l in resnet.unit_layers()}
    c_in, widths, blocks = resnet.in_channels, resnet.widths, resnet.block_widths
    # stream 0: the stem conv and the second conv of blocks 0-2 write into it, each + BN scale/offset
    assert layers["stream0"].group_size == 9 * c_in + 2 + sum(9 * b + 2 for b in blocks[0:3])
    # stream 1: the 1x1 shortcut conv (reads stream 0) and the second conv of blocks 3-5
    assert layers["stream1"].group_size == widths[0] + 2 + sum(9 * b + 2 for b in blocks[3:6])
    assert layers["block3"].group_size == 9 * widths[0] + 2  # reads stream 0 (stride 2)
    assert layers["block4"].group_size == 9 * widths[1] + 2
    assert layers["head"].group_size == widths[2] + 1

    lenet = LeNet5Caffe.from_config(LeNet5Caffe.example_config(), nnx.Rngs(0))
    for layer in lenet.unit_layers():
        assert layer.group_size == layer.fan_in + 1  # a column (filter) and its bias


@pytest.mark.parametrize("cls", ARCHITECTURES)
def test_config_with_units_shrinks_the_named_axes(cls):
    net = nnx.eval_shape(lambda: cls.from_config(cls.example_config(), nnx.Rngs(0)))
    layers = [layer for layer in net.unit_layers() if layer.prunable]
    units = {layer.name: max(1, layer.units - 1) for layer in layers[::2]}
    config = cls.config_with_units(net.config, units)
    small = nnx.eval_shape(lambda: cls.from_config(config, nnx.Rngs(0)))
    small_state = full_state(small)
    for layer, small_layer in zip(net.unit_layers(), small.unit_layers()):
        assert small_layer.name == layer.name
        assert small_layer.units == units.get(layer.name, layer.units)
        for member in small_layer.members:
            assert small_state[member.path].shape[member.axis] == small_layer.units


@pytest.mark.parametrize("cls,seed", [(cls, i) for i, cls in enumerate(ARCHITECTURES)])
def test_compact_equals_masked(cls, seed):
    net = cls.from_config(cls.example_config(), nnx.Rngs(seed))
    randomise(net, seed)
    net.eval()
    keep = random_keep(net, seed)
    x = example_input(net.config, seed=seed)
    expected = masked_copy(net, keep)(x)
    # removing units changes the function: the mask is not a no-op
    assert relative_error(net(x), expected) > 1e-3

    small = reference_compact(net, keep)
    small.eval()
    assert relative_error(small(x), expected) < 1e-5

    params = flatten_paths(pure_params(net))
    masked_by_prune = FunctionalNet(net)(mask_params(net.unit_layers(), params, keep), x)
    assert relative_error(masked_by_prune, expected) < 1e-6
    compact_net, compact_params = prune.compact(net, params, keep)
    compact_net.eval()
    assert relative_error(compact_net(x), expected) < 1e-5
    assert relative_error(FunctionalNet(compact_net)(compact_params, x), expected) < 1e-5
    for layer in compact_net.unit_layers():
        assert layer.units == int(keep[layer.name].sum()) if layer.prunable else True


# ---------------------------------------------------------------- ResNet batch norm


def test_resnet_compact_equals_masked_in_training_mode():
    net = ResNet.from_config(ResNet.example_config(), nnx.Rngs(0))
    randomise(net, 3)
    keep = random_keep(net, 3)
    x = example_input(net.config, batch=4, seed=3)
    masked = masked_copy(net, keep)
    small = reference_compact(net, keep)
    masked.train()
    small.train()
    # a removed channel is 0 on the whole batch: batch variance 0, output scale*0 + bias = 0
    assert relative_error(small(x), masked(x)) < 1e-5


def test_resnet_stream_rule():
    net = nnx.eval_shape(lambda: ResNet(20, rngs=nnx.Rngs(0)))
    layers = {layer.name: layer for layer in net.unit_layers()}
    assert [n for n in layers if n.startswith("stream")] == ["stream0", "stream1", "stream2"]
    assert sum(n.startswith("block") for n in layers) == 9
    stream1 = layers["stream1"]
    writers = {m.path[:-1] for m in stream1.members if m.path[-1] == "kernel"}
    assert writers == {("blocks", 3, "shortcut_conv"), ("blocks", 3, "conv2"),
                       ("blocks", 4, "conv2"), ("blocks", 5, "conv2")}
    readers = {c.path[:-1] for c in stream1.consumers}
    assert readers == {("blocks", 4, "conv1"), ("blocks", 5, "conv1"), ("blocks", 6, "conv1"),
                       ("blocks", 6, "shortcut_conv")}
    assert stream1.fan_in == 16 + 3 * 32 * 9
    assert layers["stream2"].consumers[-1] == prune.ParamAxis(("head", "kernel"), 0)
    assert len(layers["stream2"].consumers) == 3  # blocks 7 and 8 read it, then the classifier
    assert layers["block3"].fan_in == 16 * 9 and layers["block4"].fan_in == 32 * 9


def test_recompute_batch_stats_matches_data_moments():
    net = ResNet.from_config(ResNet.example_config(), nnx.Rngs(0))
    batches = [example_input(net.config, batch=5, seed=s) for s in (1, 2)]
    recompute_batch_stats(net, batches)
    assert net.stem_bn.use_running_average  # left in evaluation mode
    # the stem BN sees the stem conv's outputs; its statistics are those of all 10 images
    features = jnp.concatenate([net.stem_conv(x) for x in batches])
    np.testing.assert_allclose(net.stem_bn.mean[...], features.mean(axis=(0, 1, 2)),
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(net.stem_bn.var[...], features.var(axis=(0, 1, 2)),
                               rtol=1e-3, atol=1e-6)
    assert net.stem_bn.momentum == 0.9
    # deeper BNs changed from their initial (0, 1) too
    assert float(jnp.abs(net.blocks[8].bn2.mean[...]).max()) > 1e-4


def test_functional_resnet_in_training_mode_under_jit():
    net = ResNet.from_config(ResNet.example_config(), nnx.Rngs(0))
    functional = FunctionalNet(net)
    x = example_input(net.config)
    logits = jax.jit(functional.apply)(functional.initial, x)
    assert relative_error(functional.apply(functional.initial, x), logits) < 1e-5


# ---------------------------------------------------------------- bad input


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="6 n \\+ 2"):
        ResNet(21, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="act\\(0\\)"):
        LeNet5Caffe(activation="sigmoid", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="patch_size"):
        VisionTransformer(image_size=10, patch_size=4, embed_dim=8, num_heads=2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="one entry per block"):
        MLPMixer(depth=2, token_hidden=[4, 4, 4], embed_dim=4, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="too small"):
        LeNet5Caffe(image_size=8, rngs=nnx.Rngs(0))
    net = LeNet5Caffe.from_config(LeNet5Caffe.example_config(), nnx.Rngs(0))
    with pytest.raises(ValueError, match="NHWC"):
        net(jnp.zeros((2, 1, 16, 16)))


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (2, 9, 7, 2), (1, 24, 24, 20)])
def test_lenet_max_pool_equals_flax(shape):
    """The reshape max-pool: values of ``nnx.max_pool`` (2x2, stride 2, VALID) and, away from
    ties, its gradient."""
    x = jax.random.normal(jax.random.PRNGKey(0), shape)
    reference = lambda x: nnx.max_pool(x, (2, 2), strides=(2, 2))  # noqa: E731
    np.testing.assert_array_equal(max_pool(x), reference(x))
    weights = jax.random.normal(jax.random.PRNGKey(1), reference(x).shape)
    grad = jax.grad(lambda x: jnp.sum(max_pool(x) * weights))(x)
    np.testing.assert_array_equal(grad, jax.grad(lambda x: jnp.sum(reference(x) * weights))(x))
    assert int((grad != 0).sum()) == weights.size


@pytest.mark.parametrize("net, shape, activation", [("lenet5-caffe", (28, 28, 1), "tanh"),
                                                     ("lenet5", (28, 28, 1), None),
                                                     ("resnet20", (32, 32, 3), "relu"),
                                                     ("vit", (32, 32, 3), "tanh")])
def test_run_config_activation_reaches_the_conv_nets(net, shape, activation):
    """``sparse-bnn fit --activation`` builds the LeNets and ResNets with it (SiLU by default);
    nets without an activation argument (ViT, Mixer) ignore it."""
    dataset = SimpleNamespace(input_shape=shape, num_classes=10, task="classification", name="images")
    extra = {} if activation is None else {"activation": activation}
    built = net_config(RunConfig.flat(out="unused", net=net, **extra), dataset)
    if net == "vit":
        assert "activation" not in built
        return
    assert built["activation"] == (activation or "silu")
    model = net_from_config(built)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, *shape))
    assert model.activation == built["activation"] and model(x).shape == (2, 10)


@pytest.mark.parametrize("name", sorted(NETS))
def test_every_net_declares_its_default_configuration(name):
    """``NETS[name].default_config(input_shape, outputs, ...)`` builds a net for the data (the run
    has no per-net special case): the MLP flattens the input and takes --widths, image nets take
    the images' size and channels, a ResNet its depth from the registry name."""
    shape = (64,) if name == "mlp" else (32, 32, 3)
    config = NETS[name].default_config(shape, 7, name=name, widths=[12, 8], activation="silu")
    net = net_from_config(config)
    assert net(jnp.zeros((2, *shape))).shape == (2, 7)
    if name == "mlp":
        assert config["widths"] == [12, 8] and config["in_features"] == 64
    if name.startswith("resnet"):
        assert config["net"] == name and config["depth"] == int(name.removeprefix("resnet"))
    if name != "mlp":
        with pytest.raises(ValueError, match="needs square images"):
            NETS[name].default_config((28, 20, 1), 7, name=name)
