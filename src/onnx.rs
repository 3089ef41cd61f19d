//! Export to ONNX: a trained model as the graph ONNX Runtime, tract and the
//! other runtimes people deploy with read.
//!
//! The graph (opset [`OPSET`], IR version [`IR_VERSION`]): a float32 input
//! `input` `[N, D]` (N symbolic), then for each Dense layer `dense_K` a
//! `MatMul` with the initializer `dense_K.kernel` `[in, out]`, an `Add` of
//! `dense_K.bias` `[out]` and its activation (`Relu`, `Sigmoid`, `Tanh`;
//! linear adds nothing), the output layer's `Softmax` over the last axis
//! giving `probabilities` `[N, C]`. Dropout is the identity at inference,
//! so it has no node. Node and tensor names follow Keras's layer names, so
//! the graph reads in Netron as the model's summary does. The model's
//! layers, inputs, classes and kiln's version are in `metadata_props`,
//! beside the caller's metadata (the `export` binary passes the model
//! file's image shape and provenance). A model trained on pixels reads
//! them as kiln does, `pixel / 255`. The protobuf messages are `onnx-protobuf`'s, generated
//! from ONNX's own `onnx.proto`.

use crate::model::{Layer, Params};
use anyhow::Result;
use kiln_kernels::Activation;
use onnx_protobuf::{
    tensor_proto::DataType, tensor_shape_proto, type_proto, GraphProto, Message, ModelProto, NodeProto,
    OperatorSetIdProto, StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use std::collections::BTreeMap;
use std::path::Path;

/// The ONNX operator set the graph uses (`Softmax` over one axis needs 13).
pub const OPSET: i64 = 13;
/// The ONNX IR version written (ONNX 1.10 and later read it).
pub const IR_VERSION: i64 = 8;

/// A float32 tensor type of `shape` (`None`: the symbolic batch `N`).
fn float_type(shape: &[Option<usize>]) -> TypeProto {
    let dims = shape
        .iter()
        .map(|d| {
            let mut dim = tensor_shape_proto::Dimension::new();
            dim.value = Some(match d {
                Some(n) => tensor_shape_proto::dimension::Value::DimValue(*n as i64),
                None => tensor_shape_proto::dimension::Value::DimParam("N".into()),
            });
            dim
        })
        .collect();
    let mut tensor = type_proto::Tensor::new();
    tensor.elem_type = DataType::FLOAT as i32;
    tensor.shape = Some(TensorShapeProto { dim: dims, ..Default::default() }).into();
    TypeProto { value: Some(type_proto::Value::TensorType(tensor)), ..Default::default() }
}

fn value_info(name: &str, shape: &[Option<usize>]) -> ValueInfoProto {
    ValueInfoProto { name: name.into(), type_: Some(float_type(shape)).into(), ..Default::default() }
}

/// A float32 initializer, little-endian raw data.
fn initializer(name: &str, dims: &[usize], values: &[f32]) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: DataType::FLOAT as i32,
        raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

fn node(op: &str, name: &str, inputs: &[&str], output: &str) -> NodeProto {
    NodeProto {
        op_type: op.into(),
        name: name.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        ..Default::default()
    }
}

/// The ONNX operator of an activation applied after a Dense layer's `Add`
/// (`None`: linear; softmax is handled by the caller, on the last axis).
fn activation_op(act: Activation) -> Option<&'static str> {
    match act {
        Activation::Linear => None,
        Activation::Relu => Some("Relu"),
        Activation::Sigmoid => Some("Sigmoid"),
        Activation::Tanh => Some("Tanh"),
        Activation::Softmax => Some("Softmax"),
    }
}

/// The ONNX model of `params`, its bytes; `meta` (e.g. the model file's
/// metadata) goes into `metadata_props` beside kiln's own keys.
pub fn to_onnx(params: &Params<f32>, meta: &BTreeMap<String, String>) -> Result<Vec<u8>> {
    let arch = params.arch();
    let mut graph = GraphProto { name: "kiln_sequential".into(), ..Default::default() };
    graph.input.push(value_info("input", &[None, Some(arch.inputs())]));
    let mut x = "input".to_string();
    let mut k = 0;
    for layer in arch.layers() {
        let d = match layer {
            Layer::Dense(d) => d,
            Layer::Dropout(_) => continue, // the identity at inference
        };
        let (i, o) = arch.kernel_shape(k);
        let name = format!("dense_{}", k + 1);
        let (kernel, bias) = (format!("{name}.kernel"), format!("{name}.bias"));
        graph.initializer.push(initializer(&kernel, &[i, o], params.kernel(k)));
        graph.initializer.push(initializer(&bias, &[o], params.bias(k)));
        let last = k + 1 == arch.dense().len();
        let matmul = format!("{name}/MatMul");
        graph.node.push(node("MatMul", &matmul, &[&x, &kernel], &matmul));
        let add = format!("{name}/Add");
        graph.node.push(node("Add", &add, &[&matmul, &bias], &add));
        x = add;
        if let Some(op) = activation_op(d.activation) {
            let out = if last { "probabilities".to_string() } else { format!("{name}/{op}") };
            let mut n = node(op, &format!("{name}/{op}"), &[&x], &out);
            if d.activation == Activation::Softmax {
                n.attribute.push(onnx_protobuf::AttributeProto {
                    name: "axis".into(),
                    i: -1,
                    type_: onnx_protobuf::attribute_proto::AttributeType::INT.into(),
                    ..Default::default()
                });
            }
            graph.node.push(n);
            x = out;
        }
        k += 1;
    }
    graph.output.push(value_info(&x, &[None, Some(arch.classes())]));
    let mut props: BTreeMap<String, String> = meta.clone();
    props.insert("layers".into(), arch.spec());
    props.insert("inputs".into(), arch.inputs().to_string());
    props.insert("classes".into(), arch.classes().to_string());
    props.insert("kiln_version".into(), env!("CARGO_PKG_VERSION").into());
    let model = ModelProto {
        ir_version: IR_VERSION,
        producer_name: "kiln".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        opset_import: vec![OperatorSetIdProto { domain: String::new(), version: OPSET, ..Default::default() }],
        graph: Some(graph).into(),
        metadata_props: props
            .into_iter()
            .map(|(key, value)| StringStringEntryProto { key, value, ..Default::default() })
            .collect(),
        ..Default::default()
    };
    Ok(model.write_to_bytes()?)
}

/// Writes the ONNX model of `params` to `path`, atomically (a temporary
/// file renamed into place, as every kiln output).
///
/// ```
/// use kiln::model::{Activation, Params, Sequential};
/// let arch = Sequential::new(4).dense(3, Activation::Relu).dropout(0.5).dense(2, Activation::Softmax).build().unwrap();
/// let path = std::env::temp_dir().join("kiln-doc-model.onnx");
/// kiln::onnx::export(&path, &Params::glorot(&arch, 1), &Default::default()).unwrap();
/// assert!(std::fs::metadata(&path).unwrap().len() > 100);
/// ```
pub fn export(path: &Path, params: &Params<f32>, meta: &BTreeMap<String, String>) -> Result<()> {
    crate::fsutil::write_atomic(path, &to_onnx(params, meta)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Arch;

    #[test]
    fn the_graph_has_a_matmul_add_and_activation_per_dense_layer_and_no_dropout() {
        let arch = Arch::parse("5:relu,dropout:0.5,4:tanh,3:linear", 6, 2).unwrap();
        let bytes = to_onnx(&Params::glorot(&arch, 1), &BTreeMap::new()).unwrap();
        let m = ModelProto::parse_from_bytes(&bytes).unwrap();
        let g = m.graph.as_ref().unwrap();
        let ops: Vec<&str> = g.node.iter().map(|n| n.op_type.as_str()).collect();
        let want = ["MatMul", "Add", "Relu", "MatMul", "Add", "Tanh", "MatMul", "Add", "MatMul", "Add", "Softmax"];
        assert_eq!(ops, want);
        assert_eq!(g.output[0].name, "probabilities");
        assert_eq!(g.initializer.len(), 8);
        assert_eq!(g.initializer[0].dims, [6, 5]);
        assert_eq!(g.initializer[0].raw_data.len(), 6 * 5 * 4);
        // The linear layer's Add feeds the next MatMul directly.
        assert_eq!(g.node[8].input[0], "dense_3/Add");
        let props: BTreeMap<_, _> = m.metadata_props.iter().map(|p| (p.key.as_str(), p.value.as_str())).collect();
        assert_eq!(props["layers"], "5:relu,dropout:0.5,4:tanh,3:linear,2:softmax");
        assert_eq!((m.opset_import[0].version, m.ir_version), (OPSET, IR_VERSION));
    }
}
