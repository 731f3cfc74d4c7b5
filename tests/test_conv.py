"""The loop-friendly CPU conv gradient equals lax's, in and out of loops, on every covered case."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

from sparse_bnn.nets import FunctionalNet, LeNet5Caffe, ResNet, net_from_config
from sparse_bnn.nets import conv as conv_lib
from sparse_bnn.nets.conv import conv_general_dilated, conv_gradient, uses_explicit_gradient
from sparse_bnn.compact.report import count_macs

NHWC = ("NHWC", "HWIO", "NHWC")

# (input shape, kernel shape, strides, padding): the nets' convs and odd corners.
CASES = [
    ((3, 12, 12, 2), (5, 5, 2, 4), (1, 1), "VALID"),         # LeNet
    ((3, 9, 9, 3), (3, 3, 3, 4), (1, 1), "SAME"),            # ResNet, odd size
    ((3, 9, 8, 3), (3, 3, 3, 4), (2, 2), "SAME"),            # ResNet downsampling, uneven
    ((3, 8, 8, 3), (1, 1, 3, 4), (2, 2), "SAME"),            # 1x1 shortcut
    ((3, 8, 8, 3), (3, 3, 3, 4), (2, 2), "VALID"),           # rows the window never reaches
    ((2, 10, 7, 2), (3, 5, 2, 3), (1, 2), ((1, 2), (0, 1))),  # rectangular, explicit pads
]


def _loss_and_grads(conv, x, k, strides, padding):
    def loss(x, k):
        y = conv(x, k, strides, padding, dimension_numbers=NHWC)
        return jnp.sum(jnp.sin(y) * jnp.arange(y.size).reshape(y.shape) / y.size), y
    (value, out), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(x, k)
    return value, out, grads


@pytest.mark.parametrize("lhs_shape,rhs_shape,strides,padding", CASES)
def test_explicit_gradient_equals_lax(lhs_shape, rhs_shape, strides, padding):
    x = jax.random.normal(jax.random.PRNGKey(0), lhs_shape)
    k = jax.random.normal(jax.random.PRNGKey(1), rhs_shape)
    with conv_gradient("explicit"):
        assert uses_explicit_gradient(lhs_shape, rhs_shape, strides, padding, dimension_numbers=NHWC)
        value, out, (gx, gk) = _loss_and_grads(conv_general_dilated, x, k, strides, padding)
    ref_value, ref_out, (ref_gx, ref_gk) = _loss_and_grads(lax.conv_general_dilated, x, k,
                                                           strides, padding)
    np.testing.assert_array_equal(out, ref_out)
    np.testing.assert_allclose(value, ref_value, rtol=1e-6)
    np.testing.assert_allclose(gx, ref_gx, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gk, ref_gk, rtol=1e-5, atol=1e-5)
    assert float(jnp.abs(gx).max()) > 0 and float(jnp.abs(gk).max()) > 0


def test_explicit_gradient_inside_scan():
    """Where it matters: gradient descent steps of a conv stack in a jitted ``lax.scan``."""
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 4, 12, 12, 1))
    kernels = (jax.random.normal(jax.random.PRNGKey(1), (5, 5, 1, 3)) * 0.3,
               jax.random.normal(jax.random.PRNGKey(2), (3, 3, 3, 2)) * 0.3)

    def train(conv):
        def loss(ks, xb):
            h = jax.nn.relu(conv(xb, ks[0], (1, 1), "VALID", dimension_numbers=NHWC))
            h = conv(h, ks[1], (2, 2), "SAME", dimension_numbers=NHWC)
            return jnp.mean((h - 0.5) ** 2)

        def step(ks, xb):
            grads = jax.grad(loss)(ks, xb)
            return jax.tree.map(lambda a, g: a - 0.1 * g, ks, grads), loss(ks, xb)
        return jax.jit(lambda ks, xs: lax.scan(step, ks, xs))(kernels, x)

    with conv_gradient("explicit"):
        (ours, our_losses) = train(conv_general_dilated)
    (ref, ref_losses) = train(lax.conv_general_dilated)
    np.testing.assert_allclose(our_losses, ref_losses, rtol=1e-5)
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert not np.allclose(ours[0], kernels[0])  # the steps moved the kernels


@pytest.mark.parametrize("kwargs", [
    {"rhs_dilation": (2, 2)}, {"lhs_dilation": (2, 1), "padding": ((1, 1), (1, 1))},
    {"feature_group_count": 2},
    {"dimension_numbers": ("NCHW", "OIHW", "NCHW")}, {"dimension_numbers": None},
    {"padding": ((3, 0), (0, 0))}, {"padding": ((0, 0), (-1, 0))}])
def test_uncovered_arguments_fall_back_to_lax(kwargs):
    args = {"window_strides": (1, 1), "padding": "SAME", "dimension_numbers": NHWC, **kwargs}
    shape, kernel = (2, 8, 8, 4), (3, 3, 4, 6)
    with conv_gradient("explicit"):
        assert not uses_explicit_gradient(shape, kernel, **args)
        x = jax.random.normal(jax.random.PRNGKey(0), shape)
        k = jax.random.normal(jax.random.PRNGKey(1),
                              (3, 3, 2, 6) if kwargs.get("feature_group_count") else kernel)
        if args["dimension_numbers"] != NHWC:  # lax's default layout is NCHW / OIHW too
            x, k = x.transpose(0, 3, 1, 2), k.transpose(3, 2, 0, 1)
        ours = conv_general_dilated(x, k, **args)
    np.testing.assert_array_equal(ours, lax.conv_general_dilated(x, k, **args))


def test_mode_selection():
    args = ((2, 8, 8, 1), (3, 3, 1, 2), (1, 1), "SAME")
    assert jax.default_backend() == "cpu"  # the suite runs with JAX_PLATFORMS=cpu
    assert uses_explicit_gradient(*args, dimension_numbers=NHWC)  # auto, on CPU
    with conv_gradient("lax"):
        assert not uses_explicit_gradient(*args, dimension_numbers=NHWC)
    assert conv_lib.CONV_GRADIENT == "auto"
    with pytest.raises(ValueError, match="conv gradient must be one of"):
        with conv_gradient("fast"):
            pass
    assert conv_lib.CONV_GRADIENT == "auto"


@pytest.mark.parametrize("net_config", [LeNet5Caffe.example_config(), ResNet.example_config()])
def test_nets_use_it_and_keep_their_gradients(net_config):
    net = net_from_config(net_config)
    convs = [m for _, m in nnx.iter_graph(net) if isinstance(m, nnx.Conv)]
    assert convs and all(m.conv_general_dilated is conv_general_dilated for m in convs)
    size, channels = net_config["image_size"], net_config["in_channels"]
    x = jax.random.normal(jax.random.PRNGKey(3), (4, size, size, channels))
    functional = FunctionalNet(net)

    def grads():
        def loss(params):
            return jnp.sum(functional.apply(params, x) ** 2)
        return jax.jit(jax.grad(loss))(functional.initial)  # fresh: traced under the current mode

    ours = grads()
    with conv_gradient("lax"):
        ref = grads()
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-5)


def test_macs_still_counted():
    """``report.count_macs`` finds the convolutions inside the custom-gradient call."""
    net = LeNet5Caffe(rngs=nnx.Rngs(0))
    conv_macs = 24 * 24 * 20 * 25 + 8 * 8 * 50 * 20 * 25
    dense_macs = 800 * 800 + 800 * 500 + 500 * 10
    assert count_macs(net, (28, 28, 1)) == conv_macs + dense_macs
