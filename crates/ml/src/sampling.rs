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
    /// OpenAI's penalties on tokens already generated (not the prompt): each logit loses
    /// `presence_penalty` once the token has appeared and `frequency_penalty` per appearance.
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: None,
        }
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
        if !(-2.0..=2.0).contains(&self.presence_penalty) {
            return bad("presence_penalty must be within -2..=2");
        }
        if !(-2.0..=2.0).contains(&self.frequency_penalty) {
            return bad("frequency_penalty must be within -2..=2");
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
        self.penalize(logits, history, history.len());
        self.choose(logits)
    }

    /// Applies the repetition penalty (over `history`) and the presence and frequency penalties
    /// (over `history[prompt_len..]`, the generated tokens) to `logits`.
    pub fn penalize(&self, logits: &mut [f32], history: &[u32], prompt_len: usize) {
        let p = &self.params;
        if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
            let mut generated = history.get(prompt_len..).unwrap_or_default().to_vec();
            generated.sort_unstable();
            for run in generated.chunk_by(|a, b| a == b) {
                if let Some(l) = logits.get_mut(run[0] as usize) {
                    *l -= p.presence_penalty + p.frequency_penalty * run.len() as f32;
                }
            }
        }
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
    }

    /// Picks a token from (already penalized) logits by temperature, top-k and top-p.
    pub fn choose(&mut self, logits: &[f32]) -> u32 {
        let p = &self.params;
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

/// Log-probabilities of the model's distribution (`logits` after penalties, before
/// temperature): of `token`, and of the `top` most likely tokens, most likely first.
pub fn logprobs(logits: &[f32], token: u32, top: usize) -> (f32, Vec<(u32, f32)>) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let log_total = logits.iter().map(|l| (l - max).exp()).sum::<f32>().ln() + max;
    let of = |l: f32| l - log_total;
    let chosen = logits.get(token as usize).map_or(f32::NEG_INFINITY, |&l| of(l));
    let mut ranked: Vec<(u32, f32)> = logits.iter().enumerate().map(|(i, &l)| (i as u32, l)).collect();
    let top = top.min(ranked.len());
    if top > 0 && top < ranked.len() {
        ranked.select_nth_unstable_by(top - 1, |a, b| b.1.total_cmp(&a.1));
    }
    ranked.truncate(top);
    ranked.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
    (chosen, ranked.into_iter().map(|(id, l)| (id, of(l))).collect())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn presence_and_frequency_penalties_count_generated_tokens_only() {
        let params = SamplingParams { presence_penalty: 1.0, frequency_penalty: 0.5, ..Default::default() };
        let sampler = Sampler::new(params);
        let mut logits = vec![0.0; 4];
        // Prompt [1, 1], then token 2 generated twice and token 3 once.
        sampler.penalize(&mut logits, &[1, 1, 2, 2, 3], 2);
        assert_eq!(logits, vec![0.0, 0.0, -2.0, -1.5]);
        assert!(SamplingParams { presence_penalty: 2.5, ..Default::default() }.validate().is_err());
    }

    #[test]
    fn logprobs_are_a_normalized_log_softmax_with_the_top_first() {
        let logits = [1.0f32, 3.0, 2.0, 0.5];
        let (chosen, top) = logprobs(&logits, 2, 2);
        let total: f32 = logits.iter().map(|l| l.exp()).sum();
        assert!((chosen - (2.0f32.exp() / total).ln()).abs() < 1e-5);
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 2]);
        assert!((top[1].1 - chosen).abs() < 1e-6);
        assert!(logprobs(&logits, 0, 0).1.is_empty());
    }

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
