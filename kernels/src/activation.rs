//! [`Activation`], with Keras's names, and [`Applied`]: where the kernels
//! apply each one.

use crate::Real;

/// How the kernels apply an activation ([`Activation::applied`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// Nothing to apply (linear).
    Identity,
    /// ReLU, inside the kernels: in the forward GEMM's epilogue, and as a
    /// mask in the input gradient's.
    ReluInKernel,
    /// Elementwise after the product, with [`Activation::apply`] forward
    /// and [`Activation::backward`] backward (sigmoid, tanh; the right
    /// class for a new activation unless a kernel learns it).
    Elementwise,
    /// Softmax: only on the output layer, fused with the cross-entropy.
    WithLoss,
}

/// Declares [`Activation`], `Activation::ALL` and `Activation::name` from
/// one list, so that a new activation is one line of it (its doc, variant
/// and Keras's name): it is then in `ALL` (parsing, error messages, every
/// test that iterates over the activations) and has its name, and the
/// exhaustive matches below (where it is applied, its forward, its
/// derivative) do not compile until they have its arm.
macro_rules! activations {
    ($($(#[doc = $doc:literal])* $variant:ident => $name:literal,)+) => {
        /// The activation of a Dense layer, with Keras's names.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Activation {
            $($(#[doc = $doc])* $variant,)+
        }

        impl Activation {
            /// Every activation, in the order errors list them.
            pub const ALL: [Activation; [$($name),+].len()] = [$(Activation::$variant),+];

            /// Keras's name (`relu`, `sigmoid`, ...).
            pub fn name(self) -> &'static str {
                match self {
                    $(Activation::$variant => $name,)+
                }
            }
        }
    };
}

activations! {
    /// `max(0, z)`.
    Relu => "relu",
    /// `1 / (1 + exp(-z))`.
    Sigmoid => "sigmoid",
    /// `tanh(z)`.
    Tanh => "tanh",
    /// `z` (no activation).
    Linear => "linear",
    /// Softmax over the row; only for the output layer, where it is fused
    /// with the categorical cross-entropy.
    Softmax => "softmax",
}

impl Activation {
    /// Where the kernels apply this activation. Every kernel asks this
    /// (never `act == Relu` and the like), and the match has no wildcard:
    /// a new activation does not compile until it is classified here, so
    /// it can never silently become the identity on one backend.
    ///
    /// ```
    /// use kiln_kernels::{Activation, Applied};
    /// assert_eq!(Activation::Relu.applied(), Applied::ReluInKernel);
    /// assert_eq!(Activation::Tanh.applied(), Applied::Elementwise);
    /// ```
    pub fn applied(self) -> Applied {
        match self {
            Activation::Linear => Applied::Identity,
            Activation::Relu => Applied::ReluInKernel,
            Activation::Sigmoid | Activation::Tanh => Applied::Elementwise,
            Activation::Softmax => Applied::WithLoss,
        }
    }

    /// `act(z)` for one element (every activation but softmax, which needs
    /// the whole row: `Softmax` returns `z`). ReLU keeps NaN and `-0.0` as
    /// `if z < 0 { 0 } else { z }` does, like the SIMD epilogues.
    ///
    /// ```
    /// use kiln_kernels::Activation;
    /// assert_eq!(Activation::Relu.apply(-2.0f32), 0.0);
    /// assert_eq!(Activation::Sigmoid.apply(0.0f32), 0.5);
    /// ```
    pub fn apply<T: Real>(self, z: T) -> T {
        match self {
            Activation::Linear | Activation::Softmax => z,
            Activation::Relu => {
                if z < T::zero() {
                    T::zero()
                } else {
                    z
                }
            }
            Activation::Sigmoid => z.sigmoid(),
            Activation::Tanh => z.tanh_act(),
        }
    }

    /// The gradient with respect to `z` from the gradient `g` with respect
    /// to the output `y = act(z)`, in TensorFlow's order of operations:
    /// ReLU `g * [y > 0]`, sigmoid `g * y * (1 - y)`, tanh `g * (1 - y * y)`,
    /// linear `g`. (Softmax is never asked: its gradient is fused with the
    /// cross-entropy; it returns `g`.)
    ///
    /// ```
    /// use kiln_kernels::Activation;
    /// assert_eq!(Activation::Tanh.backward(0.5f32, 2.0), 1.5);
    /// ```
    pub fn backward<T: Real>(self, y: T, g: T) -> T {
        match self {
            Activation::Linear | Activation::Softmax => g,
            Activation::Relu => {
                if y > T::zero() {
                    g
                } else {
                    T::zero()
                }
            }
            Activation::Sigmoid => g * y * (T::one() - y),
            Activation::Tanh => g * (T::one() - y * y),
        }
    }
}

impl std::fmt::Display for Activation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Activation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Activation::ALL.into_iter().find(|a| a.name() == s).ok_or_else(|| {
            let names: Vec<&str> = Activation::ALL.iter().map(|a| a.name()).collect();
            format!("unknown activation `{s}`; expected one of {}", names.join(", "))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{Activation, Applied};

    /// Every activation parses from its name, and its derivative, written
    /// in terms of its output, is its forward's central difference in f64
    /// (away from ReLU's kink): a new activation is checked here as soon as
    /// it is declared.
    #[test]
    fn every_activation_round_trips_its_name_and_differentiates_its_forward() {
        for a in Activation::ALL {
            assert_eq!(a.name().parse::<Activation>(), Ok(a));
            assert_eq!(a.to_string(), a.name());
            if a.applied() == Applied::WithLoss {
                continue;
            }
            for z in [-2.5f64, -0.7, -0.1, 0.1, 0.4, 1.3, 3.0] {
                let h = 1e-6;
                let numeric = (a.apply(z + h) - a.apply(z - h)) / (2.0 * h);
                let analytic = a.backward(a.apply(z), 1.0);
                assert!((numeric - analytic).abs() < 1e-8, "{a} at {z}: {analytic} vs {numeric}");
            }
        }
        assert!("gelu".parse::<Activation>().unwrap_err().contains("relu, sigmoid, tanh, linear, softmax"));
    }
}
