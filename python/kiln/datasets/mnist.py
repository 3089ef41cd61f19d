"""MNIST, as `keras.datasets.mnist`."""

from .. import _kiln


def load_data(path="mnist.npz"):
    """`(x_train, y_train), (x_test, y_test)`: uint8 images (60000, 28, 28) and
    (10000, 28, 28), uint8 labels (60000,) and (10000,), from kiln's vendored
    IDX files (`KILN_MNIST_DIR` names another directory of them). `path` is
    Keras's cache file name and is ignored: nothing is downloaded."""
    del path
    x_train, y_train, x_test, y_test = _kiln.load_mnist()
    return (x_train, y_train), (x_test, y_test)
