use std::sync::Arc;

use candle_core::quantized::GgmlDType;
use openledger_ml::adapters::AdapterSource;
use openledger_ml::lora::AdapterMix;
use openledger_ml::sampling::SamplingParams;
use openledger_ml::testing::write_peft_adapter;
use openledger_ml::{
    Engine, EngineConfig, EngineStats, FinishReason, GenerateRequest, MlError, Prompt, Target, load_model,
};

use crate::model::{Fixture, generate_alone};

struct Setup {
    fixture: Fixture,
    adapters_dir: std::path::PathBuf,
}

impl Setup {
    fn new(adapters: &[(&str, u64)]) -> Self {
        let fixture = Fixture::new();
        let model = fixture.gguf(GgmlDType::Q8_0);
        let adapters_dir = fixture.dir.path().join("adapters");
        for (id, seed) in adapters {
            write_peft_adapter(
                &adapters_dir.join(id),
                model.config(),
                4,
                &[Target::Q, Target::V, Target::Up],
                *seed,
                false,
            )
            .unwrap();
        }
        Self { fixture, adapters_dir }
    }

    fn engine(&self, config: EngineConfig) -> Engine {
        let path = self.fixture.dir.path().join("tiny-Q8_0.gguf");
        let (model, tokenizer) = load_model(&path, &candle_core::Device::Cpu).unwrap();
        Engine::start(model, tokenizer, AdapterSource::Dir(self.adapters_dir.clone()), config).unwrap()
    }

    /// Greedy tokens of the prompt run alone on the bare model, for comparison.
    fn alone(&self, prompt: &[u32], adapter: Option<&str>, n: usize) -> Vec<u32> {
        let model = self.fixture.gguf(GgmlDType::Q8_0);
        let mix = match adapter {
            Some(id) => AdapterMix(vec![(self.fixture.adapter_from(&model, id, &self.adapters_dir.join(id)), 1.0)]),
            None => AdapterMix::default(),
        };
        generate_alone(&model, prompt, &mix, n).0
    }
}

fn tokens(prompt: &[u32], max: usize) -> GenerateRequest {
    GenerateRequest::new(Prompt::Tokens(prompt.to_vec()), max)
}

#[tokio::test]
async fn concurrent_requests_with_their_own_adapters_match_running_alone() {
    let ids: Vec<(String, u64)> = (0..6).map(|i| (format!("ad-{i}"), i as u64 + 10)).collect();
    let named: Vec<(&str, u64)> = ids.iter().map(|(s, n)| (s.as_str(), *n)).collect();
    let setup = Setup::new(&named);
    let engine = setup.engine(EngineConfig { max_batch_size: 4, max_prefill_tokens_per_step: 5, ..Default::default() });
    let prompts: Vec<Vec<u32>> = (0..8u32).map(|i| (0..(3 + i * 2)).map(|t| (t * 7 + i) % 250).collect()).collect();
    let mut generations = Vec::new();
    for (i, prompt) in prompts.iter().enumerate() {
        let request = match i % 4 {
            0 => tokens(prompt, 8),
            _ => tokens(prompt, 8).with_adapter(&ids[i % 6].0),
        };
        generations.push(engine.submit(request).unwrap());
    }
    for (i, generation) in generations.into_iter().enumerate() {
        let (_, got, reason, usage) = generation.collect().await.unwrap();
        let adapter = (i % 4 != 0).then(|| ids[i % 6].0.as_str());
        let expected = setup.alone(&prompts[i], adapter, 8);
        let until_stop: Vec<u32> = expected.iter().copied().take_while(|t| *t != 263).collect();
        if until_stop.len() < 8 {
            assert_eq!(got[..got.len() - 1], until_stop[..], "request {i}");
            assert_eq!(reason, FinishReason::Stop);
        } else {
            assert_eq!(got, expected, "request {i}");
            assert_eq!(reason, FinishReason::Length);
        }
        assert_eq!(usage.prompt_tokens, prompts[i].len());
        assert_eq!(usage.completion_tokens, got.len());
    }
    let used: std::collections::BTreeSet<usize> = (0..8).filter(|i| i % 4 != 0).map(|i| i % 6).collect();
    let cache = engine.adapter_cache();
    assert_eq!(cache.cached_ids().len(), used.len());
    assert_eq!(cache.metrics.misses.get(), used.len() as u64, "each adapter loaded once");
}

#[tokio::test]
async fn bad_requests_fail_alone_and_the_engine_keeps_serving() {
    let setup = Setup::new(&[("good", 1)]);
    // A mismatched adapter: built for a wider base.
    let model = setup.fixture.gguf(GgmlDType::Q8_0);
    let mut wide = model.config().clone();
    wide.hidden_size = 96;
    write_peft_adapter(&setup.adapters_dir.join("wide"), &wide, 4, &[Target::Q], 1, false).unwrap();
    let engine = setup.engine(EngineConfig::default());

    let err = engine.submit(tokens(&[1, 2, 3], 8).with_adapter("wide")).unwrap().collect().await.unwrap_err();
    assert!(err.to_string().contains("does not fit the base model"), "{err}");
    let err = engine.submit(tokens(&[1, 2, 3], 8).with_adapter("missing")).unwrap().collect().await.unwrap_err();
    assert!(err.to_string().contains("not found"), "{err}");
    let err = engine.submit(tokens(&[1, 2], 8).with_adapter("../etc")).unwrap_err();
    assert!(matches!(err, MlError::InvalidRequest(_)), "{err}");
    let err = engine.submit(tokens(&[1; 250], 10)).unwrap_err();
    assert!(matches!(err, MlError::ContextOverflow { .. }), "{err}");
    let err = engine.submit(tokens(&[], 10)).unwrap_err();
    assert!(matches!(err, MlError::InvalidRequest(_)), "{err}");
    let bad_sampling =
        GenerateRequest { sampling: SamplingParams { top_p: 2.0, ..Default::default() }, ..tokens(&[1], 2) };
    assert!(matches!(engine.submit(bad_sampling).unwrap_err(), MlError::InvalidRequest(_)));
    let out_of_vocab = engine.submit(tokens(&[99_999], 2)).unwrap().collect().await.unwrap_err();
    assert!(out_of_vocab.to_string().contains("outside the vocabulary"), "{out_of_vocab}");

    let (_, ids, _, _) = engine.submit(tokens(&[1, 2, 3], 4).with_adapter("good")).unwrap().collect().await.unwrap();
    assert!(!ids.is_empty());
}

#[tokio::test]
async fn a_full_queue_is_overloaded_and_cancelled_requests_free_their_slot() {
    let setup = Setup::new(&[]);
    let engine =
        setup.engine(EngineConfig { max_batch_size: 1, max_queue: 2, max_kv_tokens: 200, ..Default::default() });
    // The first request occupies the only batch slot for a long time; then the queue fills.
    let long = engine.submit(tokens(&[5, 6, 7], 150)).unwrap();
    let mut queued = Vec::new();
    let mut overloaded = false;
    for _ in 0..50 {
        match engine.submit(tokens(&[1, 2], 4)) {
            Ok(g) => queued.push(g),
            Err(MlError::Overloaded(_)) => {
                overloaded = true;
                break;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(overloaded, "the bounded queue never said overloaded");
    // Cancelling the long request lets every queued one finish.
    drop(long);
    for g in queued {
        let (_, ids, _, _) = g.collect().await.unwrap();
        assert!(!ids.is_empty() && ids.len() <= 4);
    }
}

/// The engine's stats once `done` holds (the engine thread publishes them after each step).
async fn stats_once(engine: &Engine, done: impl Fn(&EngineStats) -> bool) -> EngineStats {
    loop {
        let stats = engine.stats();
        if done(&stats) {
            return stats;
        }
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
}

#[tokio::test]
async fn a_dropped_generation_frees_its_slot_and_kv_reservation_after_one_step() {
    let setup = Setup::new(&[]);
    let engine = setup.engine(EngineConfig { max_batch_size: 1, max_kv_tokens: 200, ..Default::default() });
    let _scenario = fail::FailScenario::setup();
    // The engine admits the request, publishes its stats, then waits before its first step.
    fail::cfg("engine-before-step", "pause").unwrap();
    let long = engine.submit(tokens(&[5, 6, 7], 150)).unwrap();
    let admitted = stats_once(&engine, |s| s.running == 1).await;
    assert_eq!(admitted, EngineStats { running: 1, waiting: 0, kv_tokens_reserved: 3 + 150, tokens_generated: 0 });

    drop(long);
    fail::remove("engine-before-step");
    let freed = stats_once(&engine, |s| s.running == 0).await;
    assert_eq!(
        freed,
        EngineStats { running: 0, waiting: 0, kv_tokens_reserved: 0, tokens_generated: 1 },
        "freed after the one step already under way, not after max_tokens"
    );
}

#[tokio::test]
async fn chat_stop_strings_and_seeded_sampling() {
    let setup = Setup::new(&[]);
    let engine = setup.engine(EngineConfig::default());
    let chat = Prompt::Chat(vec![openledger_ml::ChatMessage::new("user", "the tin")]);
    let (text, _, _, usage) = engine.submit(GenerateRequest::new(chat, 12)).unwrap().collect().await.unwrap();
    assert_eq!(
        usage.prompt_tokens,
        engine.tokenizer().encode("<|im_start|>user\nthe tin<|im_end|>\n<|im_start|>assistant\n").unwrap().len()
    );
    // A stop string cut from the greedy text: the output ends right before it, and says stop.
    if let Some(stop) = text.get(3..5).filter(|s| !s.trim().is_empty() && text.find(*s) == Some(3)) {
        let chat = Prompt::Chat(vec![openledger_ml::ChatMessage::new("user", "the tin")]);
        let request = GenerateRequest { stop: vec![stop.to_string()], ..GenerateRequest::new(chat, 12) };
        let (cut, _, reason, _) = engine.submit(request).unwrap().collect().await.unwrap();
        assert_eq!(cut, text[..3]);
        assert_eq!(reason, FinishReason::Stop);
    }
    let sampled = |seed| GenerateRequest {
        sampling: SamplingParams { temperature: 1.0, top_p: 0.95, top_k: 50, seed: Some(seed), ..Default::default() },
        ..tokens(&[3, 4, 5], 16)
    };
    let a = engine.submit(sampled(1)).unwrap().collect().await.unwrap().1;
    let b = engine.submit(sampled(1)).unwrap().collect().await.unwrap().1;
    let c = engine.submit(sampled(2)).unwrap().collect().await.unwrap().1;
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn adapter_cache_stays_in_budget_and_never_evicts_pinned_adapters() {
    let ids: Vec<(String, u64)> = (0..5).map(|i| (format!("c{i}"), i as u64)).collect();
    let named: Vec<(&str, u64)> = ids.iter().map(|(s, n)| (s.as_str(), *n)).collect();
    let setup = Setup::new(&named);
    let model = setup.fixture.gguf(GgmlDType::Q8_0);
    let one = setup.fixture.adapter_from(&model, "c0", &setup.adapters_dir.join("c0")).size_bytes();
    let cache =
        openledger_ml::adapters::AdapterCache::new(AdapterSource::Dir(setup.adapters_dir.clone()), 2 * one + one / 2);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let rt = runtime.handle();
    let pinned = cache.load("c0", &model, rt).unwrap();
    for id in ["c1", "c2", "c3"] {
        cache.load(id, &model, rt).unwrap();
        assert!(cache.cached_bytes() <= 2 * one + one / 2);
    }
    assert_eq!(cache.cached_ids(), vec!["c0", "c3"], "c0 is pinned, LRU evicted c1 then c2");
    assert_eq!(cache.metrics.evictions.get(), 2);
    // With c0 and c3 pinned, nothing can make room.
    let _also = cache.get("c3").unwrap();
    let err = cache.load("c4", &model, rt).unwrap_err();
    assert!(matches!(err, MlError::Overloaded(_)), "{err}");
    drop(pinned);
    cache.load("c4", &model, rt).unwrap();
    assert_eq!(cache.cached_ids(), vec!["c3", "c4"]);
    assert_eq!(Arc::strong_count(&_also), 2);
}

#[test]
fn adapters_come_from_an_object_store_and_preload_at_start() {
    use object_store::{ObjectStore, PutPayload, memory::InMemory, path::Path as ObjectPath};
    let setup = Setup::new(&[("remote", 4)]);
    let store = Arc::new(InMemory::new());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    for file in ["adapter_config.json", "adapter_model.safetensors"] {
        let bytes = std::fs::read(setup.adapters_dir.join("remote").join(file)).unwrap();
        let path = ObjectPath::from(format!("adapters/remote/{file}"));
        runtime.block_on(store.put(&path, PutPayload::from(bytes))).unwrap();
    }
    let cache_dir = setup.fixture.dir.path().join("adapter-cache");
    let source = AdapterSource::ObjectStore { store, prefix: "adapters".into(), cache_dir: cache_dir.clone() };
    let path = setup.fixture.dir.path().join("tiny-Q8_0.gguf");
    let (model, tokenizer) = load_model(&path, &candle_core::Device::Cpu).unwrap();
    let config = EngineConfig { preload: vec!["remote".into()], ..Default::default() };
    let engine = Engine::start(model, tokenizer, source.clone(), config).unwrap();
    assert_eq!(engine.adapter_cache().cached_ids(), vec!["remote"], "preloaded before any request");
    assert!(cache_dir.join("remote").join("adapter_model.safetensors").exists(), "copied to the local cache");
    let (_, ids, _, _) =
        runtime.block_on(engine.submit(tokens(&[1, 2, 3], 6).with_adapter("remote")).unwrap().collect()).unwrap();
    assert_eq!(ids, setup.alone(&[1, 2, 3], Some("remote"), 6)[..ids.len()]);
    assert!(engine.adapter_cache().metrics.hits.get() >= 1);
    // A missing object is a clear not-found; a preload of it stops the start.
    let (model, tokenizer) = load_model(&path, &candle_core::Device::Cpu).unwrap();
    let config = EngineConfig { preload: vec!["absent".into()], ..Default::default() };
    let err = Engine::start(model, tokenizer, source, config).unwrap_err();
    assert!(matches!(err, MlError::NotFound { .. }), "{err}");
    let left: Vec<_> = std::fs::read_dir(&cache_dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, vec![std::ffi::OsString::from("remote")], "a failed download leaves nothing behind");
}
