//! Where and in which order a training step's backward runs on the pool's
//! threads. `net.rs` says what each layer's backward computes; this module
//! says how the layers share the threads, which changes no result.
//!
//! On a pool of two threads, a network with hidden layers runs each hidden
//! layer's input gradient on one thread beside its weight gradient and
//! update on the other, each op alone on its core, and the thread that
//! ends first takes over the rest of the input gradient
//! ([`Backend::hidden_backward_both`]): split over both threads from the
//! start, every op listed its operand's non-zeros twice and waited for
//! the slower half. The input gradient then reads the layer's kernel from
//! a copy made before the hidden layers, since the update changes the
//! kernel meanwhile. Before them, the output layer and the copy run while
//! the backend may list the batch's pixels for the input layer on the
//! other thread, which then copies half of the kernels; the input layer's
//! weight gradient comes last, on both.
//! On any other pool each op runs over the whole pool in turn, and the
//! hidden layers run while the pixels are listed.

use super::arena::Slot;
use super::Inputs;
use kiln_kernels::{AlignedVec, Backend, InputLists, Layer1Path, Real, Rows};
use std::ops::Range;

/// How a step's backward runs its hidden layers.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Plan {
    /// One op at a time, each over the whole pool; the hidden layers run
    /// while the input layer's pixels are listed.
    Serial,
    /// Each hidden layer's input and weight gradients side by side, after
    /// the pixels are listed; `kernels` is the range of the arena that
    /// holds the hidden layers' kernels (copied aside first).
    Paired { kernels: Range<usize> },
}

impl Plan {
    /// The plan for a network laid out in `slots` (one per Dense layer) on
    /// the current pool.
    pub(super) fn new(slots: &[Slot]) -> Plan {
        let last = slots.len() - 1;
        if last >= 2 && kiln_kernels::runs_side_by_side() {
            Plan::Paired { kernels: slots[1].kernel.start..slots[last - 1].kernel.end }
        } else {
            Plan::Serial
        }
    }

    /// Whether the hidden layers run while the input layer's pixels are
    /// listed (else after).
    pub(super) fn hidden_while_listing(&self) -> bool {
        matches!(self, Plan::Serial)
    }

    /// Before the hidden layers: copies their kernels out of the arena `w`
    /// into `copy` when their input gradients will read them while their
    /// updates change them.
    pub(super) fn snapshot<T: Real>(&self, copy: &mut AlignedVec<T>, w: &[T]) {
        if let Plan::Paired { kernels } = self {
            // Made once a model first pairs (most never do).
            if copy.len() != kernels.len() {
                *copy = AlignedVec::zeroed(kernels.len());
            }
            // In two halves: the other thread, once done listing the
            // pixels (`listing_pixels`), takes the second.
            let src = &w[kernels.clone()];
            let half = src.len() / 2;
            let (c0, c1) = copy.split_at_mut(half);
            let (s0, s1) = src.split_at(half);
            rayon::join(|| c0.copy_from_slice(s0), || c1.copy_from_slice(s1));
        }
    }

    /// The copy of a hidden layer's kernel (at `kernel` in the arena) that
    /// its input gradient reads while its update changes the kernel, when
    /// paired: the two products then run at once
    /// ([`Backend::hidden_backward_both`]). `None`: the input gradient
    /// reads the kernel itself, before the update.
    pub(super) fn kernel_copy<'c, T>(&self, copy: &'c [T], kernel: &Range<usize>) -> Option<&'c [T]> {
        match self {
            Plan::Paired { kernels } => Some(&copy[kernel.start - kernels.start..kernel.end - kernels.start]),
            Plan::Serial => None,
        }
    }
}

/// Runs `above` (the backward above the input layer) while, where the
/// backend gains by it, another thread lists the non-zero pixels of the
/// batch `rows` of `inputs` (`k` an image) for the input layer's weight
/// gradient; f32 features need no lists.
pub(super) fn listing_pixels<'x, T: Real>(
    be: &dyn Backend<T>,
    (inputs, rows): (Inputs<'x>, &'x [u32]),
    k: usize,
    path: Layer1Path,
    above: &mut dyn FnMut(),
) -> Option<InputLists<'x>> {
    match inputs {
        Inputs::Pixels(pixels) => Some(be.overlap_input_lists(Rows::new(pixels, rows), k, path, above)),
        Inputs::Features(_) => {
            above();
            None
        }
    }
}
