//! How a backend lays a network's parameters out in one arena, and the
//! forward pass below the output layer: shared by training ([`super::Model`])
//! and inference ([`super::Predictor`]), so both compute the same bits.

use super::dropout::{self, StepKey};
use super::inputs::at_least;
use super::{Arch, Inputs, Params};
use kiln_kernels::{AlignedVec, Backend, Dims, Layer1Path, PanelLayout, Real, Rows, Weights};
use std::ops::Range;

/// Where one layer's tensors sit in a [`Model`]'s arenas.
#[derive(Clone, Debug)]
pub(super) struct Slot {
    /// `K = in`, `N = out`.
    pub(super) dims: Dims,
    /// The kernel's storage (the backend's panels, or row-major for the output layer).
    pub(super) layout: PanelLayout,
    pub(super) kernel: Range<usize>,
    pub(super) bias: Range<usize>,
}

/// Where each layer's tensors sit in an arena of `arch`'s parameters on
/// `be`: every kernel in the backend's panels (the output layer's
/// row-major), then every bias. Returns the slots and the arena's length.
pub(super) fn arena_slots<T: Real>(be: &dyn Backend<T>, arch: &Arch) -> (Vec<Slot>, usize) {
    let last = arch.dense.len() - 1;
    let mut slots = Vec::new();
    let mut at = 0;
    for l in 0..=last {
        let (k, n) = arch.kernel_shape(l);
        let layout = if l < last { be.weight_layout(k, n) } else { PanelLayout::row_major(k, n) };
        slots.push(Slot { dims: Dims { k, n }, layout, kernel: at..at + layout.len(), bias: 0..0 });
        at += layout.len();
    }
    for s in &mut slots {
        s.bias = at..at + s.dims.n;
        at += s.dims.n;
    }
    (slots, at)
}

/// Packs row-major `params` into an arena laid out as `slots`.
pub(super) fn pack_into<T: Real>(slots: &[Slot], params: &Params<T>, arena: &mut [T]) {
    for (l, s) in slots.iter().enumerate() {
        s.layout.pack(params.kernel(l), &mut arena[s.kernel.clone()]);
        arena[s.bias.clone()].copy_from_slice(params.bias(l));
    }
}

/// How the forward pass treats Dropout: inference passes values through;
/// training keeps each Dense layer's own output in `pre` (where a Dropout
/// follows it) and the masks in `keep`, both indexed by Dense layer.
pub(super) enum Mode<'a, T: Real> {
    Inference,
    Training { key: StepKey, pre: &'a mut [AlignedVec<T>], keep: &'a mut [Vec<u8>] },
}

/// The forward pass below the output layer, for rows `rows` of `inputs`
/// (`(R, D)`): each hidden layer's output (after its Dropouts, in
/// training) into `acts[l]` (`(B, U_l)`), calling `done(l)` after layer
/// `l`. Returns the output layer's input, `(B, K_L)`: the last hidden
/// activation, or for a one-layer network the batch gathered into `input`.
/// The input layer reads u8 pixels in place; f32 features are gathered
/// into `input` first (`(B, D)`, grown as needed), and read from there as
/// a hidden layer reads the activations below it. With `shift` (offsets
/// and layer 1's bias for them, `shift.rs`), gathered features are shifted
/// and layer 1 adds that bias.
pub(super) fn forward_hidden<'a, T: Real>(
    be: &dyn Backend<T>,
    (arch, slots, w): (&Arch, &[Slot], &[T]),
    (acts, input, mut mode): (&'a mut [AlignedVec<T>], &'a mut AlignedVec<T>, Mode<'_, T>),
    (inputs, rows, shift): (Inputs<'_>, &[u32], Option<Shifted<'_, T>>),
    path: Layer1Path,
    mut done: impl FnMut(usize),
) -> &'a [T] {
    let b = rows.len();
    let last = slots.len() - 1;
    let d = slots[0].dims.k;
    let gathered = matches!(inputs, Inputs::Features(_)) || last == 0;
    // Only features below a hidden layer are shifted.
    let shift = shift.filter(|_| matches!(inputs, Inputs::Features(_)) && last > 0);
    if gathered {
        let x = at_least(input, b * d);
        inputs.gather(x, rows, d);
        if let Some((offsets, _)) = shift {
            super::shift::subtract(x, offsets);
        }
    }
    let input = &input[..if gathered { b * d } else { 0 }];
    for (l, s) in slots[..last].iter().enumerate() {
        let act = arch.dense[l].activation;
        let bias = match shift {
            Some((_, shifted)) if l == 0 => shifted,
            _ => &w[s.bias.clone()],
        };
        let weights = Weights::new(&w[s.kernel.clone()], bias);
        let (below, here) = acts.split_at_mut(l);
        let bn = b * s.dims.n;
        let drops = &arch.after[l][..];
        // What the layer reads: the pixels in place, or a (B, K) matrix.
        let x = match (l, inputs) {
            (0, Inputs::Pixels(pixels)) => Read::Pixels(Rows::new(pixels, rows)),
            (0, Inputs::Features(_)) => Read::Matrix(input),
            _ => Read::Matrix(&below[l - 1][..b * s.dims.k]),
        };
        let out = &mut here[0][..bn];
        // With Dropouts to apply, the Dense layer writes its own output
        // aside and the masked copy goes on.
        match &mut mode {
            Mode::Training { key, pre, keep } if !drops.is_empty() => {
                let h = &mut pre[l][..bn];
                dense_forward(be, h, x, weights, act, path, s.dims);
                let keep = &mut keep[l][..dropout::mask_len(drops, b, s.dims.n)];
                dropout::forward(drops, *key, rows, (h, out, keep));
            }
            _ => {
                debug_assert!(!dropout::acts_in_inference(drops), "a layer after dense_{} acts in inference", l + 1);
                dense_forward(be, out, x, weights, act, path, s.dims)
            }
        }
        done(l);
    }
    if last == 0 {
        input
    } else {
        &acts[last - 1][..b * slots[last].dims.k]
    }
}

/// Shifted features (`shift.rs`): the offsets `c (D)` and layer 1's bias
/// for them, `b + c^T W`.
pub(super) type Shifted<'a, T> = (&'a [T], &'a [T]);

/// What a hidden Dense layer reads.
#[derive(Clone, Copy)]
enum Read<'a, T> {
    /// Rows of u8 pixels (the input layer).
    Pixels(Rows<'a, u8>),
    /// A `(B, K)` matrix.
    Matrix(&'a [T]),
}

/// `h := act(x @ kernel + bias)` for a Dense layer below the output layer.
fn dense_forward<T: Real>(
    be: &dyn Backend<T>,
    h: &mut [T],
    x: Read<'_, T>,
    w: Weights<'_, T>,
    act: kiln_kernels::Activation,
    path: Layer1Path,
    dims: Dims,
) {
    match x {
        Read::Pixels(pixels) => be.input_forward(h, pixels, w, act, path, dims),
        Read::Matrix(x) => be.hidden_forward(h, x, w, act, path, dims),
    }
}
