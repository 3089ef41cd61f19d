//! The layers: [`Dense`], an [`Arch`] valid by construction, and Keras's
//! [`Sequential`] builder.

use anyhow::{bail, ensure, Result};
use kiln_kernels::Activation;

/// One `Dense(units, activation)` layer, as Keras writes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dense {
    /// Output width.
    pub units: usize,
    /// Applied to `x @ kernel + bias`.
    pub activation: Activation,
}

/// Most parameters a model may have (2^32 f32 are 16 GiB per copy, and a
/// model keeps three copies): a guard against widths that overflow memory.
const MAX_PARAMETERS: usize = 1 << 32;

/// A validated stack of Dense layers on `inputs` pixels: at least one
/// layer, every width at least 1, softmax on the output layer and nowhere
/// else. Built by [`Arch::new`], [`Arch::parse`] or [`Sequential`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Arch {
    pub(super) inputs: usize,
    pub(super) layers: Vec<Dense>,
}

impl Arch {
    /// The stack `layers` on `inputs` pixels, or an error that says what is
    /// wrong and what was expected.
    ///
    /// ```
    /// use kiln::model::{Activation, Arch, Dense};
    /// let arch = Arch::new(784, vec![Dense { units: 10, activation: Activation::Softmax }]).unwrap();
    /// assert_eq!(arch.parameters(), 7850);
    /// assert!(Arch::new(784, vec![Dense { units: 10, activation: Activation::Relu }]).is_err());
    /// ```
    pub fn new(inputs: usize, layers: Vec<Dense>) -> Result<Arch> {
        ensure!(inputs > 0, "the input has 0 pixels; expected at least 1");
        ensure!(!layers.is_empty(), "the model has no layers; expected at least the output layer (e.g. 10:softmax)");
        for (l, d) in layers.iter().enumerate() {
            ensure!(d.units > 0, "layer {} has 0 units; expected at least 1", l + 1);
            let last = l + 1 == layers.len();
            if d.activation == Activation::Softmax && !last {
                bail!("layer {} is softmax, which only the output layer may be (it is fused with the loss)", l + 1);
            }
            if last && d.units > 256 {
                bail!("the output layer has {} units; labels are bytes, so at most 256 classes", d.units);
            }
            if last && d.activation != Activation::Softmax {
                bail!(
                    "the output layer {} is {}; expected softmax (kiln trains with categorical cross-entropy)",
                    l + 1,
                    d.activation
                );
            }
        }
        let arch = Arch { inputs, layers };
        let mut total = 0usize;
        for l in 0..arch.layers.len() {
            let (i, o) = arch.kernel_shape(l);
            total = i
                .checked_mul(o)
                .and_then(|k| k.checked_add(o))
                .and_then(|p| total.checked_add(p))
                .unwrap_or(usize::MAX);
        }
        ensure!(
            total <= MAX_PARAMETERS,
            "the layers {} need {} parameters, more than the {MAX_PARAMETERS} kiln can hold in memory",
            arch.spec(),
            if total == usize::MAX { "more than 2^64".to_string() } else { total.to_string() }
        );
        Ok(arch)
    }

    /// Parses `512:relu,256:relu,10:softmax` (Keras order, `units:activation`
    /// per layer). When the last layer given is not softmax, the output
    /// layer `classes:softmax` is appended; when it is, its width must be
    /// `classes`.
    ///
    /// ```
    /// use kiln::model::Arch;
    /// let a = Arch::parse("512:relu", 784, 10).unwrap();
    /// assert_eq!(a.spec(), "512:relu,10:softmax");
    /// assert!(Arch::parse("512:relu,9:softmax", 784, 10).is_err());
    /// ```
    pub fn parse(spec: &str, inputs: usize, classes: usize) -> Result<Arch> {
        let expected = "expected UNITS:ACTIVATION[,...], e.g. 512:relu,256:relu,10:softmax";
        ensure!(!spec.trim().is_empty(), "the layer list is empty; {expected}");
        let mut layers = Vec::new();
        for (l, part) in spec.split(',').enumerate() {
            let part = part.trim();
            let Some((units, act)) = part.split_once(':') else {
                bail!("layer {} `{part}` has no activation; {expected}", l + 1);
            };
            let units: usize = units.trim().parse().map_err(|_| {
                anyhow::anyhow!("layer {} `{part}`: `{units}` is not a number of units; {expected}", l + 1)
            })?;
            let activation: Activation =
                act.trim().parse().map_err(|e| anyhow::anyhow!("layer {} `{part}`: {e}", l + 1))?;
            layers.push(Dense { units, activation });
        }
        if layers.last().is_some_and(|d| d.activation != Activation::Softmax) {
            layers.push(Dense { units: classes, activation: Activation::Softmax });
        }
        let out = layers.last().expect("at least one layer").units;
        ensure!(
            out == classes,
            "the output layer has {out} units, but the data has {classes} classes; expected {classes}:softmax"
        );
        Arch::new(inputs, layers)
    }

    /// Pixels per input image.
    pub fn inputs(&self) -> usize {
        self.inputs
    }

    /// The layers, input layer first.
    pub fn layers(&self) -> &[Dense] {
        &self.layers
    }

    /// Classes: the output layer's width.
    pub fn classes(&self) -> usize {
        self.layers.last().expect("validated: at least one layer").units
    }

    /// `(in, out)` of layer `l`'s kernel.
    pub fn kernel_shape(&self, l: usize) -> (usize, usize) {
        let fan_in = if l == 0 { self.inputs } else { self.layers[l - 1].units };
        (fan_in, self.layers[l].units)
    }

    /// Parameters of all layers (kernels and biases).
    pub fn parameters(&self) -> usize {
        (0..self.layers.len()).map(|l| self.kernel_shape(l)).map(|(i, o)| i * o + o).sum()
    }

    /// The layers in `--layers` syntax, e.g. `512:relu,10:softmax`.
    pub fn spec(&self) -> String {
        self.layers.iter().map(|d| format!("{}:{}", d.units, d.activation)).collect::<Vec<_>>().join(",")
    }

    /// The model as Keras's `model.summary()` prints it: each layer, its
    /// output shape, its parameter count, and the total.
    pub fn summary(&self) -> String {
        let rule = "-".repeat(62);
        let mut s = format!("{:<30}{:<20}{:>12}\n{rule}\n", "Layer (type)", "Output Shape", "Param #");
        for (l, d) in self.layers.iter().enumerate() {
            let (i, o) = self.kernel_shape(l);
            let name = format!("dense_{} (Dense, {})", l + 1, d.activation);
            s.push_str(&format!("{name:<30}{:<20}{:>12}\n", format!("(None, {o})"), i * o + o));
        }
        s.push_str(&format!("{rule}\nTotal params: {} (input: {} pixels)", self.parameters(), self.inputs));
        s
    }
}

/// Keras's `Sequential` builder: `Sequential::new(784).dense(512,
/// Activation::Relu).dense(10, Activation::Softmax).build()`.
///
/// ```
/// use kiln::model::{Activation, Sequential};
/// let arch = Sequential::new(784).dense(512, Activation::Relu).dense(10, Activation::Softmax).build().unwrap();
/// assert_eq!(arch.spec(), "512:relu,10:softmax");
/// assert_eq!(arch.parameters(), 407_050);
/// ```
#[derive(Clone, Debug)]
pub struct Sequential {
    inputs: usize,
    layers: Vec<Dense>,
}

impl Sequential {
    /// An empty stack on images of `inputs` pixels.
    pub fn new(inputs: usize) -> Self {
        Sequential { inputs, layers: Vec::new() }
    }

    /// Adds `Dense(units, activation)`.
    pub fn dense(mut self, units: usize, activation: Activation) -> Self {
        self.layers.push(Dense { units, activation });
        self
    }

    /// The validated architecture (see [`Arch::new`]).
    pub fn build(self) -> Result<Arch> {
        Arch::new(self.inputs, self.layers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_appends_the_output_layer_and_checks_every_rule() {
        assert_eq!(Arch::parse("512:relu,256:tanh", 784, 26).unwrap().spec(), "512:relu,256:tanh,26:softmax");
        assert_eq!(Arch::parse(" 64:relu , 10:softmax ", 784, 10).unwrap().layers().len(), 2);
        let err = |s: &str| Arch::parse(s, 784, 10).unwrap_err().to_string();
        assert!(err("").contains("the layer list is empty"), "{}", err(""));
        assert!(err("0:relu").contains("layer 1 has 0 units"), "{}", err("0:relu"));
        assert!(err("64:gelu").contains("unknown activation `gelu`; expected one of relu"), "{}", err("64:gelu"));
        assert!(err("64").contains("has no activation"), "{}", err("64"));
        assert!(err("x:relu").contains("`x` is not a number"), "{}", err("x:relu"));
        assert!(err("10:softmax,64:relu").contains("layer 1 is softmax"), "{}", err("10:softmax,64:relu"));
        assert!(err("64:relu,12:softmax").contains("has 12 units, but the data has 10 classes"));
        let huge = Arch::parse("4000000000:relu", 784, 10).unwrap_err().to_string();
        assert!(huge.contains("more than the 4294967296 kiln can hold"), "{huge}");
        let wide = Arch::parse("64:relu,300:softmax", 784, 300).unwrap_err().to_string();
        assert!(wide.contains("at most 256 classes"), "{wide}");
        let overflow = Arch::parse("18446744073709551615:relu", 784, 10).unwrap_err().to_string();
        assert!(overflow.contains("more than 2^64"), "{overflow}");
    }

    #[test]
    fn summary_lists_layers_shapes_and_parameters_like_keras() {
        let a = Arch::parse("512:relu,256:relu", 784, 10).unwrap();
        let s = a.summary();
        assert!(s.contains("dense_1 (Dense, relu)") && s.contains("(None, 512)") && s.contains("401920"), "{s}");
        assert!(s.contains("dense_3 (Dense, softmax)") && s.contains("2570"), "{s}");
        assert!(s.contains("Total params: 535818"), "{s}");
    }
}
