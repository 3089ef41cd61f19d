//! The layers: [`Dense`] and [`Dropout`], each a [`Layer`] kind; an
//! [`Arch`] valid by construction; and Keras's [`Sequential`] builder.

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

/// Keras's `Dropout(rate)`: in training, each value of the layer's input
/// is kept with probability `1 - rate` and scaled by `1 / (1 - rate)`, or
/// set to zero; in inference it passes unchanged. The rate is in `[0, 1)`
/// (private, so it always is).
///
/// ```
/// use kiln::model::Dropout;
/// assert_eq!(Dropout::new(0.2).unwrap().rate(), 0.2);
/// assert!(Dropout::new(1.0).is_err() && Dropout::new(-0.1).is_err() && Dropout::new(f64::NAN).is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dropout {
    rate: f64,
}

// A rate is never NaN (`Dropout::new` refuses it), so `==` is an equivalence.
impl Eq for Dropout {}

impl Dropout {
    /// `Dropout(rate)`, or an error unless `0 <= rate < 1`.
    pub fn new(rate: f64) -> Result<Dropout> {
        ensure!(
            (0.0..1.0).contains(&rate),
            "dropout rate {rate} is outside [0, 1); expected the fraction of values to drop, e.g. dropout:0.2"
        );
        Ok(Dropout { rate })
    }

    /// The fraction of values dropped in training.
    pub fn rate(self) -> f64 {
        self.rate
    }
}

/// One layer of a [`Sequential`] stack. Every `match` on this enum is
/// exhaustive, so a new kind does not compile until each place that must
/// know it does; [`Arch::new`] decides how the model runs it: a Dense
/// layer's product (the kernels), or a layer acting on each value of the
/// Dense layer below, whose forward and backward sit side by side in the
/// model's `dropout` module and whose own type there makes the compiler
/// point at each place that runs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layer {
    /// A fully connected layer with its activation.
    Dense(Dense),
    /// Dropout of the layer below's output, in training only.
    Dropout(Dropout),
}

impl From<Dense> for Layer {
    fn from(d: Dense) -> Layer {
        Layer::Dense(d)
    }
}

impl From<Dropout> for Layer {
    fn from(d: Dropout) -> Layer {
        Layer::Dropout(d)
    }
}

impl Layer {
    /// Keras's class name (`Dense`, `Dropout`).
    pub fn kind(&self) -> &'static str {
        match self {
            Layer::Dense(_) => "Dense",
            Layer::Dropout(_) => "Dropout",
        }
    }

    /// The layer in `--layers` syntax (`512:relu`, `dropout:0.2`).
    pub fn spec(&self) -> String {
        match self {
            Layer::Dense(d) => format!("{}:{}", d.units, d.activation),
            Layer::Dropout(d) => format!("dropout:{}", d.rate),
        }
    }
}

/// A Dropout as the model applies it: after Dense layer `after` (0-based,
/// counting Dense layers only), the `ordinal`-th Dropout of the stack
/// (0-based), which keys its masks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DropoutAt {
    pub(crate) ordinal: u32,
    pub(crate) dropout: Dropout,
}

/// A layer without parameters that acts on each value of the Dense layer
/// before it, as the model runs it: in training (forward and backward, in
/// `model::dropout`) and in inference (`model::arena`). Those places match
/// on it exhaustively, so a new kind of this sort (GaussianNoise,
/// ActivityRegularization, ...) is a variant here and the compiler points
/// at each place that must run it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Elementwise {
    /// A Dropout with a rate above 0 (rate 0 is no layer at all).
    Dropout(DropoutAt),
}

/// Most parameters a model may have (2^32 f32 are 16 GiB per copy, and a
/// model keeps three copies): a guard against widths that overflow memory.
const MAX_PARAMETERS: usize = 1 << 32;

/// A validated stack of layers on `inputs` values per sample: at least one
/// Dense layer, every width at least 1, softmax on the output layer (the
/// last) and nowhere else, and every Dropout after a Dense layer. Built by
/// [`Arch::new`], [`Arch::parse`] or [`Sequential`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Arch {
    pub(super) inputs: usize,
    /// Every layer, in Keras's order.
    layers: Vec<Layer>,
    /// The Dense layers alone: Dense layer `k` owns the tensors `dense_{k+1}.*`.
    pub(super) dense: Vec<Dense>,
    /// For each Dense layer, the layers that act on each of its values right
    /// after it, in order.
    pub(super) after: Vec<Vec<Elementwise>>,
}

impl Arch {
    /// The stack `layers` on `inputs` values, or an error that says what is
    /// wrong and what was expected.
    ///
    /// ```
    /// use kiln::model::{Activation, Arch, Dense, Dropout, Layer};
    /// let arch = Arch::new(784, vec![Dense { units: 10, activation: Activation::Softmax }]).unwrap();
    /// assert_eq!(arch.parameters(), 7850);
    /// assert!(Arch::new(784, vec![Dense { units: 10, activation: Activation::Relu }]).is_err());
    /// let relu = Layer::Dense(Dense { units: 64, activation: Activation::Relu });
    /// let out = Layer::Dense(Dense { units: 10, activation: Activation::Softmax });
    /// let drop = Layer::Dropout(Dropout::new(0.5).unwrap());
    /// assert_eq!(Arch::new(784, vec![relu, drop, out]).unwrap().spec(), "64:relu,dropout:0.5,10:softmax");
    /// assert!(Arch::new(784, vec![drop, relu, out]).is_err());
    /// ```
    pub fn new<L: Into<Layer>>(inputs: usize, layers: impl IntoIterator<Item = L>) -> Result<Arch> {
        let layers: Vec<Layer> = layers.into_iter().map(Into::into).collect();
        ensure!(inputs > 0, "the input has 0 values; expected at least 1");
        ensure!(!layers.is_empty(), "the model has no layers; expected at least the output layer (e.g. 10:softmax)");
        let (mut dense, mut after) = (Vec::new(), Vec::<Vec<Elementwise>>::new());
        let mut ordinal = 0u32;
        for (l, layer) in layers.iter().enumerate() {
            let last = l + 1 == layers.len();
            match *layer {
                Layer::Dense(d) => {
                    ensure!(d.units > 0, "layer {} has 0 units; expected at least 1", l + 1);
                    if d.activation == Activation::Softmax && !last {
                        bail!(
                            "layer {} is softmax, which only the output layer may be (it is fused with the loss)",
                            l + 1
                        );
                    }
                    if last && d.units > 256 {
                        bail!("the output layer has {} units; labels are bytes, so at most 256 classes", d.units);
                    }
                    dense.push(d);
                    after.push(Vec::new());
                }
                Layer::Dropout(d) => {
                    let Some(below) = after.last_mut() else {
                        bail!(
                            "layer 1 is dropout; a Dropout must follow a Dense layer (it drops that layer's outputs)"
                        );
                    };
                    if d.rate > 0.0 {
                        below.push(Elementwise::Dropout(DropoutAt { ordinal, dropout: d }));
                    }
                    ordinal += 1;
                }
            }
            if last {
                match *layer {
                    Layer::Dense(d) if d.activation == Activation::Softmax => {}
                    Layer::Dense(d) => bail!(
                        "the output layer {} is {}; expected softmax (kiln trains with categorical cross-entropy)",
                        l + 1,
                        d.activation
                    ),
                    Layer::Dropout(_) => {
                        bail!("the last layer {} is dropout; expected the output layer, UNITS:softmax, after it", l + 1)
                    }
                }
            }
        }
        let arch = Arch { inputs, layers, dense, after };
        let mut total = 0usize;
        for k in 0..arch.dense.len() {
            let (i, o) = arch.kernel_shape(k);
            total = i
                .checked_mul(o)
                .and_then(|w| w.checked_add(o))
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

    /// Parses `512:relu,dropout:0.2,256:relu,10:softmax` (Keras order:
    /// `units:activation` for a Dense layer, `dropout:rate` for a Dropout).
    /// When the last layer given is not softmax, the output layer
    /// `classes:softmax` is appended; when it is, its width must be
    /// `classes`.
    ///
    /// ```
    /// use kiln::model::Arch;
    /// let a = Arch::parse("512:relu", 784, 10).unwrap();
    /// assert_eq!(a.spec(), "512:relu,10:softmax");
    /// assert!(Arch::parse("512:relu,9:softmax", 784, 10).is_err());
    /// let mlp = Arch::parse("512:relu,dropout:0.2,512:relu,dropout:0.2", 784, 10).unwrap();
    /// assert_eq!(mlp.spec(), "512:relu,dropout:0.2,512:relu,dropout:0.2,10:softmax");
    /// assert_eq!(mlp.dense().len(), 3);
    /// ```
    pub fn parse(spec: &str, inputs: usize, classes: usize) -> Result<Arch> {
        let expected = "expected UNITS:ACTIVATION or dropout:RATE per layer, e.g. 512:relu,dropout:0.2,10:softmax";
        ensure!(!spec.trim().is_empty(), "the layer list is empty; {expected}");
        let mut layers = Vec::new();
        for (l, part) in spec.split(',').enumerate() {
            let part = part.trim();
            let Some((head, tail)) = part.split_once(':') else {
                bail!("layer {} `{part}` has no activation; {expected}", l + 1);
            };
            let (head, tail) = (head.trim(), tail.trim());
            if head == "dropout" {
                let rate: f64 = tail.parse().map_err(|_| {
                    anyhow::anyhow!("layer {} `{part}`: `{tail}` is not a dropout rate; {expected}", l + 1)
                })?;
                let d = Dropout::new(rate).map_err(|e| anyhow::anyhow!("layer {} `{part}`: {e}", l + 1))?;
                layers.push(Layer::Dropout(d));
                continue;
            }
            let units: usize = head.parse().map_err(|_| {
                anyhow::anyhow!("layer {} `{part}`: `{head}` is not a number of units; {expected}", l + 1)
            })?;
            let activation: Activation = tail.parse().map_err(|e| anyhow::anyhow!("layer {} `{part}`: {e}", l + 1))?;
            layers.push(Layer::Dense(Dense { units, activation }));
        }
        if !matches!(layers.last(), Some(Layer::Dense(d)) if d.activation == Activation::Softmax) {
            layers.push(Layer::Dense(Dense { units: classes, activation: Activation::Softmax }));
        }
        let arch = Arch::new(inputs, layers)?;
        let out = arch.classes();
        ensure!(
            out == classes,
            "the output layer has {out} units, but the data has {classes} classes; expected {classes}:softmax"
        );
        Ok(arch)
    }

    /// Values per input sample (pixels per image).
    pub fn inputs(&self) -> usize {
        self.inputs
    }

    /// Every layer, in Keras's order (input side first).
    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    /// The Dense layers alone, input side first: Dense layer `k` holds the
    /// tensors `dense_{k+1}.kernel` and `dense_{k+1}.bias`.
    pub fn dense(&self) -> &[Dense] {
        &self.dense
    }

    /// Classes: the output layer's width.
    pub fn classes(&self) -> usize {
        self.dense.last().expect("validated: at least one Dense layer").units
    }

    /// `(in, out)` of Dense layer `k`'s kernel.
    pub fn kernel_shape(&self, k: usize) -> (usize, usize) {
        let fan_in = if k == 0 { self.inputs } else { self.dense[k - 1].units };
        (fan_in, self.dense[k].units)
    }

    /// Whether any Dropout (with a rate above 0) drops values in training.
    pub fn has_dropout(&self) -> bool {
        self.after.iter().flatten().any(|e| matches!(e, Elementwise::Dropout(_)))
    }

    /// Parameters of all layers (kernels and biases).
    pub fn parameters(&self) -> usize {
        (0..self.dense.len()).map(|k| self.kernel_shape(k)).map(|(i, o)| i * o + o).sum()
    }

    /// The layers in `--layers` syntax, e.g. `512:relu,dropout:0.2,10:softmax`.
    pub fn spec(&self) -> String {
        self.layers.iter().map(Layer::spec).collect::<Vec<_>>().join(",")
    }

    /// The model as Keras's `model.summary()` prints it: each layer (named
    /// `dense_K` and `dropout_K`, K counting that kind), its output shape,
    /// its parameter count, and the total.
    pub fn summary(&self) -> String {
        let rule = "-".repeat(62);
        let mut s = format!("{:<30}{:<20}{:>12}\n{rule}\n", "Layer (type)", "Output Shape", "Param #");
        let (mut k, mut drop, mut width) = (0, 0, self.inputs);
        for layer in &self.layers {
            let (name, params) = match layer {
                Layer::Dense(d) => {
                    let (i, o) = self.kernel_shape(k);
                    k += 1;
                    width = o;
                    (format!("dense_{k} (Dense, {})", d.activation), i * o + o)
                }
                Layer::Dropout(_) => {
                    drop += 1;
                    (format!("dropout_{drop} (Dropout)"), 0)
                }
            };
            s.push_str(&format!("{name:<30}{:<20}{params:>12}\n", format!("(None, {width})")));
        }
        s.push_str(&format!("{rule}\nTotal params: {} (input: {} values)", self.parameters(), self.inputs));
        s
    }
}

/// Keras's `Sequential` builder: `Sequential::new(784).dense(512,
/// Activation::Relu).dropout(0.2).dense(10, Activation::Softmax).build()`.
///
/// ```
/// use kiln::model::{Activation, Sequential};
/// let arch = Sequential::new(784).dense(512, Activation::Relu).dense(10, Activation::Softmax).build().unwrap();
/// assert_eq!(arch.spec(), "512:relu,10:softmax");
/// assert_eq!(arch.parameters(), 407_050);
/// let mlp = Sequential::new(784).dense(512, Activation::Relu).dropout(0.2).dense(10, Activation::Softmax);
/// assert_eq!(mlp.build().unwrap().spec(), "512:relu,dropout:0.2,10:softmax");
/// let bad = Sequential::new(784).dense(512, Activation::Relu).dropout(1.0).dense(10, Activation::Softmax);
/// assert!(bad.build().unwrap_err().to_string().contains("layer 2: dropout rate 1"));
/// ```
#[derive(Clone, Debug)]
pub struct Sequential {
    inputs: usize,
    layers: Vec<Layer>,
    /// The first layer that could not be made, reported by `build`.
    error: Option<String>,
}

impl Sequential {
    /// An empty stack on samples of `inputs` values (pixels per image).
    pub fn new(inputs: usize) -> Self {
        Sequential { inputs, layers: Vec::new(), error: None }
    }

    /// Adds `Dense(units, activation)`.
    pub fn dense(mut self, units: usize, activation: Activation) -> Self {
        self.layers.push(Layer::Dense(Dense { units, activation }));
        self
    }

    /// Adds `Dropout(rate)` (a rate outside `[0, 1)` is [`Sequential::build`]'s error).
    pub fn dropout(mut self, rate: f64) -> Self {
        match Dropout::new(rate) {
            Ok(d) => self.layers.push(Layer::Dropout(d)),
            Err(e) => {
                let at = self.layers.len() + 1;
                self.error.get_or_insert_with(|| format!("layer {at}: {e}"));
            }
        }
        self
    }

    /// The validated architecture (see [`Arch::new`]).
    pub fn build(self) -> Result<Arch> {
        if let Some(e) = self.error {
            bail!(e);
        }
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
    fn dropout_parses_and_every_bad_rate_or_place_is_one_line() {
        let a = Arch::parse("64:relu,dropout:0.5,dropout:0.1,32:tanh,dropout:0", 784, 10).unwrap();
        assert_eq!(a.spec(), "64:relu,dropout:0.5,dropout:0.1,32:tanh,dropout:0,10:softmax");
        assert_eq!(a.dense().len(), 3);
        assert_eq!(a.layers().len(), 6);
        // Two in a row apply in order, keyed by their own ordinals; rate 0 computes nothing.
        let rates: Vec<Vec<(u32, f64)>> = a
            .after
            .iter()
            .map(|v| v.iter().map(|Elementwise::Dropout(d)| (d.ordinal, d.dropout.rate())).collect())
            .collect();
        assert_eq!(rates, vec![vec![(0, 0.5), (1, 0.1)], vec![], vec![]]);
        assert!(!Arch::parse("64:relu,dropout:0", 784, 10).unwrap().has_dropout());
        let err = |s: &str| Arch::parse(s, 784, 10).unwrap_err().to_string();
        for (spec, want) in [
            ("dropout:0.2,64:relu", "layer 1 is dropout; a Dropout must follow a Dense layer"),
            ("64:relu,dropout:1", "layer 2 `dropout:1`: dropout rate 1 is outside [0, 1)"),
            ("64:relu,dropout:-0.1", "dropout rate -0.1 is outside [0, 1)"),
            ("64:relu,dropout:NaN", "dropout rate NaN is outside [0, 1)"),
            ("64:relu,dropout:inf", "dropout rate inf is outside [0, 1)"),
            ("64:relu,dropout:half", "`half` is not a dropout rate"),
            ("64:relu,dropout:", "`` is not a dropout rate"),
        ] {
            let e = err(spec);
            assert!(e.contains(want) && !e.contains('\n'), "{spec}: {e}");
        }
        let relu = Layer::Dense(Dense { units: 2, activation: Activation::Relu });
        let last = Arch::new(4, [relu, Layer::Dropout(Dropout::new(0.1).unwrap())]).unwrap_err().to_string();
        assert!(last.contains("the last layer 2 is dropout; expected the output layer"), "{last}");
    }

    #[test]
    fn summary_lists_layers_shapes_and_parameters_like_keras() {
        let a = Arch::parse("512:relu,256:relu", 784, 10).unwrap();
        let s = a.summary();
        assert!(s.contains("dense_1 (Dense, relu)") && s.contains("(None, 512)") && s.contains("401920"), "{s}");
        assert!(s.contains("dense_3 (Dense, softmax)") && s.contains("2570"), "{s}");
        assert!(s.contains("Total params: 535818"), "{s}");
        let d = Arch::parse("512:relu,dropout:0.2,512:relu,dropout:0.2", 784, 10).unwrap().summary();
        let line = d.lines().find(|l| l.starts_with("dropout_1 (Dropout)")).expect(&d);
        assert!(line.contains("(None, 512)") && line.trim_end().ends_with(" 0"), "{d}");
        assert!(d.contains("dropout_2 (Dropout)") && d.contains("dense_3 (Dense, softmax)"), "{d}");
        assert!(d.contains("Total params: 669706"), "{d}");
    }
}
