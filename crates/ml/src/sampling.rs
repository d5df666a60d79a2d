//! Next-token choice from logits: repetition penalty, temperature, top-k, top-p, seeded.

use rand::{Rng, SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};

use crate::error::{MlError, Result};

/// Sampling settings of one request. `temperature = 0` is greedy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    pub temperature: f32,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches `top_p`.
    pub top_p: f32,
    /// Keep only the `top_k` most likely tokens (0: no limit).
    pub top_k: usize,
    /// CTRL-style penalty on tokens already in the prompt or output (1: off).
    pub repetition_penalty: f32,
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self { temperature: 0.0, top_p: 1.0, top_k: 0, repetition_penalty: 1.0, seed: None }
    }
}

impl SamplingParams {
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str| Err(MlError::InvalidRequest(what.to_string()));
        if !(0.0..=5.0).contains(&self.temperature) {
            return bad("temperature must be within 0..=5");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p must be within (0, 1]");
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty <= 10.0) {
            return bad("repetition_penalty must be within (0, 10]");
        }
        Ok(())
    }
}

/// A request's sampler: its settings and its own random stream.
#[derive(Debug)]
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let rng = match params.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        Self { params, rng }
    }

    /// Picks the next token. `history` is the prompt and the tokens generated so far.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        let p = &self.params;
        if p.repetition_penalty != 1.0 {
            let mut seen = history.to_vec();
            seen.sort_unstable();
            seen.dedup();
            for &t in &seen {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = if *l > 0.0 { *l / p.repetition_penalty } else { *l * p.repetition_penalty };
                }
            }
        }
        if p.temperature == 0.0 {
            return crate::model::argmax(logits);
        }
        let mut candidates: Vec<(u32, f32)> =
            logits.iter().enumerate().map(|(i, &l)| (i as u32, l / p.temperature)).collect();
        if p.top_k > 0 && p.top_k < candidates.len() {
            candidates.select_nth_unstable_by(p.top_k - 1, |a, b| b.1.total_cmp(&a.1));
            candidates.truncate(p.top_k);
        }
        candidates.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
        let max = candidates[0].1;
        let mut total = 0.0;
        for c in &mut candidates {
            c.1 = (c.1 - max).exp();
            total += c.1;
        }
        if p.top_p < 1.0 {
            let mut cumulative = 0.0;
            let mut keep = candidates.len();
            for (i, c) in candidates.iter().enumerate() {
                cumulative += c.1 / total;
                if cumulative >= p.top_p {
                    keep = i + 1;
                    break;
                }
            }
            candidates.truncate(keep);
            total = candidates.iter().map(|c| c.1).sum();
        }
        let mut draw = self.rng.random::<f32>() * total;
        for &(token, weight) in &candidates {
            if draw < weight {
                return token;
            }
            draw -= weight;
        }
        candidates.last().map_or(0, |c| c.0)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn greedy_topk_topp_and_seed() {
        let logits = vec![1.0, 3.0, 2.0, 0.5];
        let greedy = SamplingParams::default();
        assert_eq!(Sampler::new(greedy).sample(&mut logits.clone(), &[]), 1);
        // A penalty on token 1 hands the greedy choice to token 2.
        let penal = SamplingParams { repetition_penalty: 2.0, ..Default::default() };
        assert_eq!(Sampler::new(penal).sample(&mut logits.clone(), &[1]), 2);
        // top_k = 1 is greedy whatever the temperature.
        let k1 = SamplingParams { temperature: 1.0, top_k: 1, seed: Some(3), ..Default::default() };
        let mut s = Sampler::new(k1);
        assert!((0..50).all(|_| s.sample(&mut logits.clone(), &[]) == 1));
        // top_p keeps only the head of the distribution: never token 3 (p ≈ 0.03).
        let nucleus = SamplingParams { temperature: 1.0, top_p: 0.9, seed: Some(1), ..Default::default() };
        let mut s = Sampler::new(nucleus.clone());
        let draws: Vec<u32> = (0..300).map(|_| s.sample(&mut logits.clone(), &[])).collect();
        assert!(!draws.contains(&3) && draws.contains(&0) && draws.contains(&2));
        // Same seed, same draws.
        let mut again = Sampler::new(nucleus);
        assert_eq!(draws, (0..300).map(|_| again.sample(&mut logits.clone(), &[])).collect::<Vec<_>>());
        assert!(SamplingParams { top_p: 0.0, ..Default::default() }.validate().is_err());
        assert!(SamplingParams { temperature: -1.0, ..Default::default() }.validate().is_err());
    }
}
