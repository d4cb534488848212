//! A deterministic stand-in for the FID weights: every tensor of pytorch-fid's state dict,
//! same names and shapes, each value a hash of the tensor's name and the element's index.
//! `scripts/make_inception_vectors.py` computes the same values in NumPy, runs pytorch-fid's
//! network with them, calibrates the batch-norm running statistics on images and stores
//! those statistics and the outputs (`tests/data/metrics/`); tests and `relay bench metrics`
//! rebuild the network from this formula plus those statistics, with no 95 MB file.
//!
//! Not a substitute for the real weights: FIDs computed with it mean nothing outside
//! relay's own tests.

use std::collections::HashMap;

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::{VarBuilder, VarMap};

use super::{FidInception, LOGITS_DIMS};

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

fn fnv1a64(text: &str) -> u64 {
    text.bytes().fold(0xCBF2_9CE4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3)
    })
}

/// `n` values in [−1, 1): splitmix64 of fnv1a64(name) + (i + 1)·golden, top 24 bits.
pub fn uniform(name: &str, n: usize) -> Vec<f64> {
    let h = fnv1a64(name);
    (1..=n as u64)
        .map(|i| {
            let x = h.wrapping_add(i.wrapping_mul(GOLDEN));
            let mut z = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            2.0 * ((z >> 40) as f64 / (1u64 << 24) as f64) - 1.0
        })
        .collect()
}

/// The formula value of one tensor (the script's `formula`): conv weights U(±√(6/fan_in)),
/// batch-norm scales 1 ± 0.25, shifts and the fc bias ±0.25, fc weights U(±1/√2048),
/// running means 0 and variances 1 (before calibration).
pub fn formula(name: &str, shape: &[usize]) -> Vec<f32> {
    let n: usize = shape.iter().product();
    let v = uniform(name, n);
    let scaled: Vec<f64> = if name == "fc.weight" {
        v.iter().map(|x| x / 2048f64.sqrt()).collect()
    } else if name.ends_with("conv.weight") {
        let fan_in: usize = shape[1..].iter().product();
        let s = (6.0 / fan_in as f64).sqrt();
        v.iter().map(|x| x * s).collect()
    } else if name.ends_with("bn.weight") {
        v.iter().map(|x| 1.0 + 0.25 * x).collect()
    } else if name.ends_with("bn.bias") || name == "fc.bias" {
        v.iter().map(|x| 0.25 * x).collect()
    } else if name.ends_with("running_mean") {
        vec![0.0; n]
    } else {
        vec![1.0; n]
    };
    scaled.into_iter().map(|x| x as f32).collect()
}

/// Every tensor of the FID network, from the formula, with the batch-norm statistics taken
/// from `stats` where it has them (`<layer>.bn.running_mean` / `running_var`).
pub fn weights(stats: &HashMap<String, Tensor>) -> Result<HashMap<String, Tensor>> {
    // Enumerate names and shapes by building the network over an empty VarMap.
    let varmap = VarMap::new();
    FidInception::new(
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
        true,
    )?;
    let mut out = HashMap::new();
    let vars = varmap.data().lock().expect("varmap lock");
    for (name, var) in vars.iter() {
        let shape = var.dims().to_vec();
        let t = match stats.get(name) {
            Some(s) => s.to_dtype(DType::F32)?.reshape(shape.as_slice())?,
            None => Tensor::from_vec(formula(name, &shape), shape.as_slice(), &Device::Cpu)?,
        };
        out.insert(name.clone(), t);
    }
    // pytorch-fid's file has the classifier bias too; the network never reads it (ADM's IS
    // takes `softmax/logits/MatMul`, before the bias), but a faithful stand-in carries it.
    let bias = Tensor::from_vec(
        formula("fc.bias", &[LOGITS_DIMS]),
        LOGITS_DIMS,
        &Device::Cpu,
    )?;
    out.insert("fc.bias".to_string(), bias);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formula_matches_the_script() {
        // scripts/make_inception_vectors.py: uniform("Conv2d_1a_3x3.conv.weight", 3)
        let u = uniform("Conv2d_1a_3x3.conv.weight", 3);
        assert!(u.iter().all(|x| (-1.0..1.0).contains(x)));
        // 24-bit values: exactly representable in f32.
        assert!(u.iter().all(|&x| (x as f32) as f64 == x));
        assert_ne!(u[0], u[1]);
        // fan-in scaling of a 3x3x3 kernel.
        let w = formula("Conv2d_1a_3x3.conv.weight", &[32, 3, 3, 3]);
        let bound = (6.0f64 / 27.0).sqrt() as f32;
        assert!(w.iter().all(|x| x.abs() <= bound));
        assert_eq!(formula("a.bn.running_var", &[2]), vec![1.0, 1.0]);
    }

    #[test]
    fn every_tensor_of_the_state_dict() {
        let w = weights(&HashMap::new()).unwrap();
        // 94 convolutions × (weight + 4 batch-norm tensors) + fc weight and bias.
        assert_eq!(w.len(), 94 * 5 + 2);
        assert_eq!(
            w["Mixed_6d.branch7x7_2.conv.weight"].dims(),
            &[160, 160, 1, 7]
        );
        assert_eq!(w["fc.weight"].dims(), &[1008, 2048]);
    }
}
