//! The Inception Score (Salimans et al. 2016, "Improved Techniques for Training GANs",
//! §4): IS = exp(E_x KL(p(y|x) ‖ p(y))), computed as ADM's evaluator (and improved-gan's
//! `inception_score/model.py`) does: the images in consecutive splits of 5000 (the last one
//! may be shorter), p(y) the mean of p(y|x) over the split, and the splits' scores averaged.
//! float64 throughout (ADM uses float32 softmax outputs).

/// ADM's split size.
pub const SPLIT_SIZE: usize = 5000;

/// Accumulates the score split by split from logits fed in order (memory: one split).
#[derive(Debug, Clone)]
pub struct InceptionScore {
    classes: usize,
    split: usize,
    /// Softmax rows of the current split.
    part: Vec<f64>,
    scores: Vec<f64>,
}

impl InceptionScore {
    pub fn new(classes: usize, split: usize) -> Self {
        Self {
            classes,
            split: split.max(1),
            part: Vec::new(),
            scores: Vec::new(),
        }
    }

    /// Add logits rows (row-major, `classes` per row).
    pub fn add(&mut self, logits: &[f32]) {
        for row in logits.chunks_exact(self.classes) {
            let max = row.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
            let e: Vec<f64> = row.iter().map(|&x| (x as f64 - max).exp()).collect();
            let z: f64 = e.iter().sum();
            self.part.extend(e.iter().map(|v| v / z));
            if self.part.len() == self.split * self.classes {
                self.close_split();
            }
        }
    }

    fn close_split(&mut self) {
        let c = self.classes;
        let n = self.part.len() / c;
        if n == 0 {
            return;
        }
        let mut mean = vec![0f64; c];
        for row in self.part.chunks_exact(c) {
            for (m, p) in mean.iter_mut().zip(row) {
                *m += p;
            }
        }
        let log_mean: Vec<f64> = mean.iter().map(|m| (m / n as f64).ln()).collect();
        let kl: f64 = self
            .part
            .chunks_exact(c)
            .map(|row| {
                row.iter()
                    .zip(&log_mean)
                    // p ln p → 0 as p → 0 (ADM's NumPy code would give NaN there).
                    .map(|(&p, lm)| if p > 0.0 { p * (p.ln() - lm) } else { 0.0 })
                    .sum::<f64>()
            })
            .sum::<f64>()
            / n as f64;
        self.scores.push(kl.exp());
        self.part.clear();
    }

    /// The mean score over the splits.
    pub fn finish(mut self) -> Option<f64> {
        self.close_split();
        if self.scores.is_empty() {
            return None;
        }
        Some(self.scores.iter().sum::<f64>() / self.scores.len() as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confident_distinct_classes_score_the_class_count() {
        // Each image certain of its own class, classes equally used: IS = number of classes.
        let mut s = InceptionScore::new(4, SPLIT_SIZE);
        for k in 0..8 {
            let mut row = [-1e4f32; 4];
            row[k % 4] = 0.0;
            s.add(&row);
        }
        assert!((s.finish().unwrap() - 4.0).abs() < 1e-9);
        // The same prediction for every image: IS = 1.
        let mut s = InceptionScore::new(3, 2);
        s.add(&[0.1, 0.7, -0.3, 0.1, 0.7, -0.3, 0.1, 0.7, -0.3]);
        assert!((s.finish().unwrap() - 1.0).abs() < 1e-12);
    }
}
