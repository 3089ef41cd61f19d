#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets into fuzz/seeds/<target>/:
small valid files cut from the vendored MNIST data, a valid tiny model, the
same digit as PGM/BMP/PNG (8/16-bit, gray/RGBA), .npy arrays and .npz
archives (stored and deflated), and the malformed cases of
the tests (empty, short, wrong or byte-swapped magic, float element type,
payload one byte short or one too long, corrupt gzip, truncated or
duplicated model headers, transposed shapes, NaN values, ...).

    python3 fuzz/make_seeds.py      # deterministic; the output is committed
"""

import gzip
import json
import pathlib
import struct
import zlib

ROOT = pathlib.Path(__file__).resolve().parent
DATA = ROOT.parent / "data" / "mnist"


def write(target, name, data):
    d = ROOT / "seeds" / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


def idx(dims, payload, ty=8):
    return bytes([0, 0, ty, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims) + payload


images = gzip.open(DATA / "t10k-images-idx3-ubyte.gz").read()[16 : 16 + 3 * 784]
labels = gzip.open(DATA / "t10k-labels-idx1-ubyte.gz").read()[8 : 8 + 3]
digit = images[:784]

idx_cases = {
    "images3": idx([3, 28, 28], images),
    "labels3": idx([3], labels),
    "empty": b"",
    "short": b"\x00\x00\x08",
    "swapped_magic": bytes([3, 8, 0, 0]) + struct.pack(">III", 1, 28, 28) + digit,
    "float_type": idx([1, 28, 28], digit, ty=0x0D),
    "one_short": idx([3, 28, 28], images[:-1]),
    "one_long": idx([3, 28, 28], images + b"\x00"),
    "not_28": idx([1, 27, 29], digit[: 27 * 29]),
    "huge_dims": idx([0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF], b""),
    "labels_as_images": idx([3], labels),
    "zero_dims": idx([], b""),
}
for name, data in idx_cases.items():
    write("idx_raw", name, data)
    write("idx_gzip", name + ".gz", gzip.compress(data, mtime=0))
write("idx_gzip", "corrupt.gz", gzip.compress(idx_cases["images3"], mtime=0)[:-20])
write("idx_gzip", "not_gzip", idx_cases["labels3"])
write("idx_gzip", "bomb.gz", gzip.compress(b"\x00" * (1 << 22), mtime=0))


def safetensors(tensors, meta, dup=False):
    header, blob = {"__metadata__": meta}, b""
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(blob), len(blob) + len(data)]}
        blob += data
    text = json.dumps(header)
    if dup:
        first = next(iter(tensors))
        text = text[:-1] + ", " + json.dumps(first) + ": " + json.dumps(header[first]) + "}"
    text = text.encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + blob


def f32(n, v=0.01):
    return struct.pack(f"<{n}f", *([v] * n))


meta = {"format": "kiln-mlp-v1", "hidden": "1", "inputs": "784", "classes": "10"}
good = {
    "dense_1.kernel": ("F32", [784, 1], f32(784)),
    "dense_1.bias": ("F32", [1], f32(1)),
    "dense_2.kernel": ("F32", [1, 10], f32(10)),
    "dense_2.bias": ("F32", [10], f32(10)),
}
model = safetensors(good, meta)
write("model", "good_h1", model)
write("model", "truncated", model[:-7])
write("model", "short", model[:5])
write("model", "header_past_end", struct.pack("<Q", 1 << 40) + model[8:64])
write("model", "duplicate", safetensors(good, meta, dup=True))
write("model", "transposed", safetensors({**good, "dense_2.kernel": ("F32", [10, 1], f32(10))}, meta))
write("model", "f64", safetensors({**good, "dense_1.bias": ("F64", [1], struct.pack("<d", 0.5))}, meta))
write("model", "nan", safetensors({**good, "dense_2.bias": ("F32", [10], f32(10, float("nan")))}, meta))
write("model", "wrong_hidden", safetensors(good, {**meta, "hidden": "2"}))
write("model", "no_format", safetensors(good, {"hidden": "1"}))
write("model", "not_json", struct.pack("<Q", 8) + b"{nope!!}")
seq_meta = {"format": "kiln-sequential-v1", "layers": "3:tanh,2:relu,4:softmax", "inputs": "5", "classes": "4"}
seq = {
    "dense_1.kernel": ("F32", [5, 3], f32(15)),
    "dense_1.bias": ("F32", [3], f32(3)),
    "dense_2.kernel": ("F32", [3, 2], f32(6)),
    "dense_2.bias": ("F32", [2], f32(2)),
    "dense_3.kernel": ("F32", [2, 4], f32(8)),
    "dense_3.bias": ("F32", [4], f32(4)),
}
write("model", "good_seq3", safetensors(seq, seq_meta))
write("model", "seq_not_chaining", safetensors({**seq, "dense_2.kernel": ("F32", [4, 2], f32(8))}, seq_meta))
write("model", "seq_missing_layer", safetensors({k: v for k, v in seq.items() if not k.startswith("dense_2")}, seq_meta))
write("model", "seq_bad_layers", safetensors(seq, {**seq_meta, "layers": "3:gelu,2:relu,4:softmax"}))
# With the optimizer's state (Python's save of a trained model).
state = {f"optimizer.velocity.{k}": v for k, v in seq.items()}
state_meta = {**seq_meta, "iterations": "12"}
write("model", "good_seq3_state", safetensors({**seq, **state}, state_meta))
write("model", "state_no_iterations", safetensors({**seq, **state}, seq_meta))
write("model", "state_missing_tensor",
      safetensors({**seq, **{k: v for k, v in state.items() if not k.endswith("dense_3.bias")}}, state_meta))
write("model", "state_bare_name", safetensors({**seq, "optimizer.velocity": ("F32", [1], f32(1))}, state_meta))


def png(w, h, color_type, depth, rows):
    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    raw = b"".join(b"\x00" + r for r in rows)
    ihdr = struct.pack(">IIBBBBB", w, h, depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


rows = [digit[r * 28 : r * 28 + 28] for r in range(28)]
inverted = [bytes(255 - p for p in r) for r in rows]
write("image", "digit.pgm", b"P5\n28 28\n255\n" + digit)
write("image", "digit_gray8.png", png(28, 28, 0, 8, inverted))
write("image", "digit_gray16.png", png(28, 28, 0, 16, [b"".join(bytes([p, p]) for p in r) for r in inverted]))
write("image", "digit_rgba.png", png(28, 28, 6, 8, [b"".join(bytes([0, 0, 0, p]) for p in r) for r in rows]))
bmp_rows = b"".join(b"".join(bytes([p, p, p]) for p in r) for r in reversed(inverted))
bmp = b"BM" + struct.pack("<IHHI", 54 + len(bmp_rows), 0, 0, 54)
bmp += struct.pack("<IiiHHIIiiII", 40, 28, 28, 1, 24, 0, len(bmp_rows), 2835, 2835, 0, 0) + bmp_rows
write("image", "digit.bmp", bmp)
write("image", "blank.pgm", b"P5\n28 28\n255\n" + bytes(784))
write("image", "empty.png", b"")
write("image", "truncated.png", png(28, 28, 0, 8, inverted)[:60])
write("image", "zero_size.png", png(0, 0, 0, 8, []))
write("image", "huge_claim.png", png(100000, 100000, 0, 8, [])[:33])
write("image", "not_an_image.txt", b"hello, not an image\n")


def npy(descr, shape, payload, fortran="False"):
    """A .npy v1.0 array, its header padded to 64 bytes as NumPy writes it."""
    dims = "(" + "".join(f"{d}, " for d in shape).rstrip(" ") + ")" if len(shape) != 1 else f"({shape[0]},)"
    if not shape:
        dims = "()"
    h = f"{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {dims}, }}"
    h += " " * ((64 - (10 + len(h) + 1) % 64) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(h)) + h.encode() + payload


def npz(arrays, compress):
    """A .npz archive of `arrays` (name -> .npy bytes), as np.savez(_compressed) writes it."""
    import io
    import zipfile

    buf = io.BytesIO()
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(buf, "w", method) as z:
        for name, data in arrays.items():
            info = zipfile.ZipInfo(name + ".npy", (1980, 1, 1, 0, 0, 0))
            info.compress_type = method
            z.writestr(info, data)
    return buf.getvalue()


x8 = npy("|u1", (3, 4), bytes(range(12)))
y8 = npy("|u1", (3,), bytes([0, 1, 2]))
f4 = npy("<f4", (2, 2), struct.pack("<4f", 0.0, 1 / 255, 0.5, -1.0))
keras = {"x_train": x8, "y_train": y8, "x_test": x8, "y_test": y8}
write("npz", "x_u8.npy", x8)
write("npz", "f32.npy", f4)
write("npz", "scalar_i8.npy", npy("<i8", (), struct.pack("<q", 7)))
write("npz", "stored.npz", npz(keras, False))
write("npz", "deflated.npz", npz(keras, True))
write("npz", "npy_short", x8[:-1])
write("npz", "npy_big_endian", npy(">f4", (1,), b"\0\0\0\0"))
write("npz", "npy_fortran", npy("<f4", (1,), b"\0\0\0\0", "True"))
write("npz", "npy_bad_shape", npy("<f4", ("x",), b""))
write("npz", "npy_header_past_end", x8[:8] + b"\xff\xff" + x8[10:])
deflated = bytearray(npz(keras, True))
deflated[60] ^= 0xFF
write("npz", "deflated_corrupt.npz", bytes(deflated))
write("npz", "truncated.npz", npz(keras, False)[:-30])
write("npz", "not_npy_entry.npz", npz({"readme.txt": b"hello"}, False))
