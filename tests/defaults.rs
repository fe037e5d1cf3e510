//! A fresh run takes the learning rate its optimizer recommends unless one is given;
//! a resumed run keeps its own.

use futureprop::optim::default_lr;
use futureprop::train::TrainConfig;
use serde_json::json;

#[test]
fn the_learning_rate_default_belongs_to_the_optimizer() {
    let fresh = |layer: serde_json::Value| TrainConfig::fresh(&[layer]).unwrap().optim.lr;
    assert_eq!(fresh(json!({"optimizer": "adam"})), 1e-3);
    assert_eq!(fresh(json!({"optimizer": "sgd"})), 0.01);
    assert_eq!(
        fresh(json!({"optimizer": "lion"})),
        default_lr(&"lion".into()).unwrap()
    );
    // SAM takes its inner optimizer's: as a flat key of earlier versions, in its table,
    // or as its table's inner table.
    assert_eq!(fresh(json!({"optimizer": "sam", "inner": "adam"})), 1e-3);
    assert_eq!(
        fresh(json!({"optimizer": {"name": "sam", "inner": "lion"}})),
        1e-4
    );
    assert_eq!(
        fresh(json!({"optimizer": {"name": "asam", "inner": {"name": "lars"}}})),
        1.0
    );
    // A given rate wins, wherever it comes from.
    assert_eq!(fresh(json!({"optimizer": "adam", "lr": 0.05})), 0.05);
    let two = TrainConfig::fresh(&[json!({"lr": 0.2}), json!({"optimizer": "adam"})]).unwrap();
    assert_eq!(two.optim.lr, 0.2);
    // Merging onto a resumed run's config keeps its rate.
    let resumed = TrainConfig::fresh(&[json!({"optimizer": "sgd", "lr": 0.3})]).unwrap();
    assert_eq!(
        resumed.merged(&[json!({"epochs": 5})]).unwrap().optim.lr,
        0.3
    );
}
