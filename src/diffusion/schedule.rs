//! Noise-level schedules, all in f64.
//!
//! * The ρ time-step discretisation and stochastic churn: Karras et al. 2022, Eq. 5 and
//!   Algorithm 2 (edm: `generate.py edm_sampler`).
//! * The blur sampler's truncated steps (`RelayDiffusion: generate.py blur_sampler`).
//! * Φ and Φ⁻¹, which tie RDM's blur level to the quantile of the training noise level
//!   (`RelayDiffusion: blurring.py get_alpha_t`, `training/loss.py BlurLoss`).

use candle_core::cpu::erf::{erfc_f64, erfc_inv};

/// P_mean of EDM's log-normal training distribution of σ.
pub const P_MEAN: f64 = -1.2;
/// P_std of EDM's log-normal training distribution of σ.
pub const P_STD: f64 = 1.2;

/// The N noise levels t_i = (σ_max^{1/ρ} + i/(N−1)·(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ,
/// i = 0..N−1 (Karras et al. 2022, Eq. 5), *without* the trailing t_N = 0.
pub fn rho_schedule(num_steps: usize, sigma_min: f64, sigma_max: f64, rho: f64) -> Vec<f64> {
    if num_steps == 1 {
        return vec![sigma_max];
    }
    let (a, b) = (sigma_max.powf(1.0 / rho), sigma_min.powf(1.0 / rho));
    (0..num_steps)
        .map(|i| (a + i as f64 / (num_steps - 1) as f64 * (b - a)).powf(rho))
        .collect()
}

/// Checks the settings of a ρ schedule: N ≥ 1, 0 < σ_min ≤ σ_max (finite), ρ > 0.
pub fn check_steps(
    num_steps: usize,
    sigma_min: f64,
    sigma_max: f64,
    rho: f64,
) -> Result<(), String> {
    if num_steps == 0 {
        return Err("num_steps must be at least 1".into());
    }
    if !(rho > 0.0 && rho.is_finite()) {
        return Err(format!("rho = {rho} must be > 0"));
    }
    if !(sigma_min > 0.0 && sigma_min <= sigma_max && sigma_max.is_finite()) {
        return Err(format!(
            "need 0 < sigma_min ≤ sigma_max < ∞, got sigma_min = {sigma_min}, sigma_max = {sigma_max}"
        ));
    }
    Ok(())
}

/// The EDM sampler's N + 1 time steps: [`rho_schedule`] followed by t_N = 0.
pub fn edm_time_steps(num_steps: usize, sigma_min: f64, sigma_max: f64, rho: f64) -> Vec<f64> {
    let mut t = rho_schedule(num_steps, sigma_min, sigma_max, rho);
    t.push(0.0);
    t
}

/// Stochastic churn (Algorithm 2): γ_i = min(S_churn/N, √2 − 1) if S_min ≤ t_i ≤ S_max, else 0.
pub fn churn_gamma(t: f64, num_steps: usize, s_churn: f64, s_min: f64, s_max: f64) -> f64 {
    if s_min <= t && t <= s_max {
        (s_churn / num_steps as f64).min(2f64.sqrt() - 1.0)
    } else {
        0.0
    }
}

/// t̂_i = t_i + γ_i t_i.
pub fn t_hat(t: f64, gamma: f64) -> f64 {
    t + gamma * t
}

/// The blur sampler's steps: the N-step [`rho_schedule`], minus its leading entries with
/// t ≥ `truncation_sigma`, followed by 0. The sampler takes `len − 1` steps. (Every entry may
/// be dropped; the result is then `[0]` and the caller must refuse it.)
pub fn blur_time_steps(
    num_steps: usize,
    sigma_min: f64,
    sigma_max: f64,
    rho: f64,
    truncation_sigma: f64,
) -> Vec<f64> {
    let mut t: Vec<f64> = rho_schedule(num_steps, sigma_min, sigma_max, rho)
        .into_iter()
        .skip_while(|&t| t >= truncation_sigma)
        .collect();
    t.push(0.0);
    t
}

/// Φ, the standard normal CDF (as `scipy.stats.norm.cdf`).
pub fn normal_cdf(x: f64) -> f64 {
    0.5 * erfc_f64(-x / std::f64::consts::SQRT_2)
}

/// Φ⁻¹, the standard normal quantile (as `scipy.stats.norm.ppf`); −∞ at 0, +∞ at 1.
pub fn normal_ppf(p: f64) -> f64 {
    -std::f64::consts::SQRT_2 * erfc_inv(2.0 * p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_schedule_endpoints() {
        let t = edm_time_steps(18, 0.002, 80.0, 7.0);
        assert_eq!(t.len(), 19);
        assert!((t[0] - 80.0).abs() < 1e-12);
        assert!((t[17] - 0.002).abs() < 1e-15);
        assert_eq!(t[18], 0.0);
        assert!(t.windows(2).all(|w| w[0] > w[1]));
    }

    /// RDM_NOTES §6.1: 200 steps at ρ = 100 keep 100; 150 at ρ = 7 with truncation 0.95 keep
    /// 54; 18 at ρ = 7 with truncation 0.9 keep 7.
    #[test]
    fn truncated_step_counts() {
        assert_eq!(blur_time_steps(200, 0.008, 80.0, 100.0, 0.9).len() - 1, 100);
        assert_eq!(blur_time_steps(150, 0.008, 80.0, 7.0, 0.95).len() - 1, 54);
        assert_eq!(blur_time_steps(18, 0.008, 80.0, 7.0, 0.9).len() - 1, 7);
        assert_eq!(blur_time_steps(18, 0.008, 80.0, 7.0, 1e-9), vec![0.0]);
    }

    #[test]
    fn churn_is_clamped_and_windowed() {
        assert_eq!(churn_gamma(1.0, 256, 40.0, 0.05, 50.0), 40.0 / 256.0);
        assert_eq!(churn_gamma(1.0, 10, 40.0, 0.05, 50.0), 2f64.sqrt() - 1.0);
        assert_eq!(churn_gamma(60.0, 256, 40.0, 0.05, 50.0), 0.0);
        assert_eq!(churn_gamma(1.0, 18, 0.0, 0.0, f64::INFINITY), 0.0);
    }

    #[test]
    fn normal_quantiles() {
        assert_eq!(normal_cdf(0.0), 0.5);
        // Φ⁻¹(0.975) = 1.959963984540054 (scipy.stats.norm.ppf).
        assert!((normal_ppf(0.975) - 1.959963984540054).abs() < 1e-14);
        for p in [1e-6, 0.00093, 0.1, 0.5, 0.93, 0.999] {
            let x = normal_ppf(p);
            assert!((normal_cdf(x) - p).abs() <= 1e-14 * p.max(1e-3), "{p}");
        }
    }
}
