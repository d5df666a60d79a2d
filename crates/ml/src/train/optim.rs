//! AdamW with decoupled weight decay (PyTorch's update rule), a linear-warmup + cosine
//! learning-rate schedule and global gradient-norm clipping. Written here rather than taken from
//! `candle_nn::AdamW` because resuming a run exactly needs the moment estimates saved and
//! restored, which candle's optimizer keeps private.

use candle_core::{Tensor, Var};

use crate::error::Result;

#[derive(Clone, Copy, Debug)]
pub(crate) struct AdamWParams {
    pub(crate) beta1: f64,
    pub(crate) beta2: f64,
    pub(crate) eps: f64,
    pub(crate) weight_decay: f64,
}

/// The optimizer's state: the step count and first and second moments per variable.
pub(crate) struct AdamW {
    pub(crate) params: AdamWParams,
    pub(crate) step: u64,
    pub(crate) moments: Vec<(Tensor, Tensor)>,
}

impl AdamW {
    pub(crate) fn new(params: AdamWParams, vars: &[&Var]) -> Result<Self> {
        let moments =
            vars.iter().map(|v| Ok((v.zeros_like()?, v.zeros_like()?))).collect::<Result<Vec<(Tensor, Tensor)>>>()?;
        Ok(Self { params, step: 0, moments })
    }

    /// One update of `vars` with `grads` (same order) at learning rate `lr`.
    pub(crate) fn step(&mut self, vars: &[&Var], grads: &[Tensor], lr: f64) -> Result<()> {
        self.step += 1;
        let p = self.params;
        let t = self.step as i32;
        let (c1, c2) = (1.0 - p.beta1.powi(t), 1.0 - p.beta2.powi(t));
        for ((var, grad), (m, v)) in vars.iter().zip(grads).zip(self.moments.iter_mut()) {
            *m = ((&*m * p.beta1)? + (grad * (1.0 - p.beta1))?)?;
            *v = ((&*v * p.beta2)? + (grad.sqr()? * (1.0 - p.beta2))?)?;
            let update = ((&*m / c1)? / ((&*v / c2)?.sqrt()? + p.eps)?)?;
            let decayed = (var.as_tensor() * (1.0 - lr * p.weight_decay))?;
            var.set(&(decayed - (update * lr)?)?)?;
        }
        Ok(())
    }
}

/// Linear warmup from 0 to `peak` over `warmup` steps, then cosine decay to 0 at `total`.
pub(crate) fn learning_rate(step: u64, warmup: u64, total: u64, peak: f64) -> f64 {
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1) as f64;
    let progress = ((step - warmup) as f64 / span).min(1.0);
    peak * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
}

/// Scales `grads` so their global L2 norm is at most `max_norm`; returns the norm before.
pub(crate) fn clip_grad_norm(grads: &mut [Tensor], max_norm: f64) -> Result<f64> {
    let mut sum = 0f64;
    for g in grads.iter() {
        // In f64: squares of large f32 gradients must not overflow the norm.
        sum += g.to_dtype(candle_core::DType::F64)?.sqr()?.sum_all()?.to_scalar::<f64>()?;
    }
    let norm = sum.sqrt();
    if max_norm > 0.0 && norm > max_norm {
        let factor = max_norm / (norm + 1e-6);
        for g in grads.iter_mut() {
            *g = (&*g * factor)?;
        }
    }
    Ok(norm)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn schedule_warms_up_then_decays_to_zero() {
        assert!((learning_rate(0, 4, 20, 1.0) - 0.25).abs() < 1e-12);
        assert!((learning_rate(3, 4, 20, 1.0) - 1.0).abs() < 1e-12);
        assert!((learning_rate(4, 4, 20, 1.0) - 1.0).abs() < 1e-12);
        assert!((learning_rate(12, 4, 20, 1.0) - 0.5).abs() < 1e-12);
        assert!(learning_rate(20, 4, 20, 1.0).abs() < 1e-12);
    }

    /// One AdamW step from zero moments moves each weight by about `lr` against its gradient's
    /// sign, after decaying it by `lr · weight_decay`.
    #[test]
    fn adamw_first_step() {
        let var = Var::from_tensor(&Tensor::new(&[1f32, -2.0], &Device::Cpu).unwrap()).unwrap();
        let params = AdamWParams { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.1 };
        let mut opt = AdamW::new(params, &[&var]).unwrap();
        let grad = Tensor::new(&[0.5f32, -3.0], &Device::Cpu).unwrap();
        opt.step(&[&var], &[grad], 0.01).unwrap();
        let got: Vec<f32> = var.as_tensor().to_vec1().unwrap();
        assert!((got[0] - (1.0 * 0.999 - 0.01)).abs() < 1e-5, "{got:?}");
        assert!((got[1] - (-2.0 * 0.999 + 0.01)).abs() < 1e-5, "{got:?}");
    }

    #[test]
    fn clipping_bounds_the_global_norm() {
        let mut grads = vec![Tensor::new(&[3f32], &Device::Cpu).unwrap(), Tensor::new(&[4f32], &Device::Cpu).unwrap()];
        assert!((clip_grad_norm(&mut grads, 1.0).unwrap() - 5.0).abs() < 1e-6);
        let after = clip_grad_norm(&mut grads, 0.0).unwrap();
        assert!((after - 1.0).abs() < 1e-4, "{after}");
    }
}
