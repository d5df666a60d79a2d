//! Status conditions as Kubernetes API conventions shape them: `type`, `status`, `reason`,
//! `message`, `lastTransitionTime` (changed only when the status flips), `observedGeneration`.

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};

/// One condition as a reconcile sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed<'a> {
    pub type_: &'a str,
    pub status: bool,
    pub reason: &'a str,
    pub message: String,
}

/// `conditions` with `observed` set: an existing condition of that type keeps its
/// `lastTransitionTime` unless its status flips.
pub fn set(conditions: &mut Vec<Condition>, observed: Observed<'_>, generation: Option<i64>, now: Timestamp) {
    let status = if observed.status { "True" } else { "False" };
    let position = conditions.iter().position(|condition| condition.type_ == observed.type_);
    let last_transition_time = match position.map(|at| &conditions[at]) {
        Some(old) if old.status == status => old.last_transition_time.clone(),
        _ => Time(now),
    };
    let condition = Condition {
        type_: observed.type_.to_owned(),
        status: status.to_owned(),
        reason: observed.reason.to_owned(),
        message: observed.message,
        last_transition_time,
        observed_generation: generation,
    };
    match position {
        Some(at) => conditions[at] = condition,
        None => conditions.push(condition),
    }
}

/// The condition of `type_`, if set.
pub fn get<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|condition| condition.type_ == type_)
}

/// Whether the condition of `type_` is `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    get(conditions, type_).is_some_and(|condition| condition.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_transition_time_moves_only_when_the_status_flips() {
        let t0 = Timestamp::from_second(1_000).expect("time");
        let t1 = Timestamp::from_second(2_000).expect("time");
        let mut conditions = Vec::new();
        let running =
            |message: &str| Observed { type_: "Ready", status: false, reason: "Progressing", message: message.into() };
        set(&mut conditions, running("0 of 2 ready"), Some(1), t0);
        set(&mut conditions, running("1 of 2 ready"), Some(2), t1);
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0].last_transition_time, Time(t0));
        assert_eq!(conditions[0].message, "1 of 2 ready");
        assert_eq!(conditions[0].observed_generation, Some(2));
        set(
            &mut conditions,
            Observed { type_: "Ready", status: true, reason: "Available", message: String::new() },
            Some(2),
            t1,
        );
        assert_eq!(conditions[0].last_transition_time, Time(t1));
        assert!(is_true(&conditions, "Ready"));
    }
}
