//! A model exported alone (PyTorch state-dict layout) reads back with its spec and
//! tensors; a run started from given parameters starts from exactly them.

use futureprop::nn::{Init, Model, ModelSpec};
use futureprop::train::checkpoint::{export_model, import_model};

#[test]
fn an_exported_model_reads_back_with_its_spec_and_tensors() {
    let spec = ModelSpec {
        spec: "mlp:6-5-3".into(),
        activation: "tanh".into(),
        bias: false,
    };
    let m = Model::build(&spec).unwrap();
    let p = m.init_params(Init::XavierNormal, 4).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    export_model(&path, &spec, &p, None).unwrap();
    let (back, q) = import_model(&path).unwrap();
    assert_eq!(back.unwrap(), spec);
    let names: Vec<&str> = q.iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["fc1.weight", "fc2.weight"]);
    for (n, t) in p.iter() {
        assert_eq!(
            q.get(n).unwrap().shape(),
            t.shape(),
            "{n}: [out, in] as nn.Linear"
        );
        assert_eq!(q.get(n).unwrap().to_vec_f64(), t.to_vec_f64(), "{n}");
    }
    // `only` keeps the named tensors.
    export_model(&path, &spec, &p, Some(&["fc2.weight".to_string()])).unwrap();
    assert_eq!(import_model(&path).unwrap().1.len(), 1);
    let e = import_model(&dir.path().join("none.safetensors")).unwrap_err();
    assert!(e.to_string().contains("none.safetensors"), "{e}");
}
