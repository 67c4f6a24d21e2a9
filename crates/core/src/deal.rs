//! The Deal aggregate: a sales opportunity moving through the pipeline until won or lost.
//!
//! Rules: a deal is created once; open deals move freely between the open stages; a deal
//! cannot be won without a positive amount; a closed (won or lost) deal accepts no change.
//! Amounts are integers in the currency's minor unit (cents), so sums are exact.

use serde::{Deserialize, Serialize};

pub const EVENT_TYPES: &[&str] =
    &["DealCreated", "DealStageChanged", "DealAmountChanged", "DealOwnerAssigned", "DealWon", "DealLost"];

/// The open stages of the pipeline, in their usual order.
pub const STAGES: &[&str] = &["qualification", "discovery", "proposal", "negotiation"];

pub fn stream_of(deal_id: &str) -> String {
    format!("deal-{deal_id}")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DealStatus {
    #[default]
    Open,
    Won,
    Lost,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum DealEvent {
    DealCreated {
        name: String,
        #[serde(default)]
        customer_id: Option<String>,
        #[serde(default)]
        owner: Option<String>,
        stage: String,
        #[serde(default)]
        amount: Option<i64>,
        currency: String,
    },
    DealStageChanged {
        from: String,
        to: String,
    },
    DealAmountChanged {
        from: Option<i64>,
        to: i64,
    },
    DealOwnerAssigned {
        from: Option<String>,
        to: String,
    },
    DealWon {
        amount: i64,
    },
    DealLost {
        #[serde(default)]
        reason: Option<String>,
    },
}

impl DealEvent {
    pub fn to_parts(&self) -> (String, serde_json::Value) {
        crate::to_parts(self)
    }
    pub fn from_parts(event_type: &str, data: &serde_json::Value) -> Result<Self, crate::DecodeError> {
        crate::from_parts(event_type, data)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum DealCommand {
    Create {
        name: String,
        customer_id: Option<String>,
        owner: Option<String>,
        stage: Option<String>,
        amount: Option<i64>,
        currency: Option<String>,
    },
    ChangeStage {
        to: String,
    },
    ChangeAmount {
        amount: i64,
    },
    /// Several changes at once, validated whole: all of their events or none.
    Update {
        stage: Option<String>,
        amount: Option<i64>,
        owner: Option<String>,
    },
    AssignOwner {
        owner: String,
    },
    Win,
    Lose {
        reason: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DealError {
    #[error("deal already exists")]
    AlreadyExists,
    #[error("deal not found")]
    NotFound,
    #[error("deal is closed ({0:?}); no change is accepted")]
    Closed(DealStatus),
    #[error("a deal cannot be won without a positive amount")]
    WonWithoutAmount,
    #[error("unknown stage {0:?}; open stages are qualification, discovery, proposal, negotiation")]
    UnknownStage(String),
    #[error("amount must not be negative")]
    NegativeAmount,
    #[error("{0} must not be empty")]
    Empty(&'static str),
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Deal {
    pub id: String,
    pub exists: bool,
    pub name: String,
    pub customer_id: Option<String>,
    pub owner: Option<String>,
    pub stage: String,
    pub amount: Option<i64>,
    pub currency: String,
    pub status: DealStatus,
    pub version: u64,
}

impl Deal {
    pub fn new(id: impl Into<String>) -> Self {
        Deal { id: id.into(), ..Default::default() }
    }

    pub fn decide(&self, cmd: DealCommand) -> Result<Vec<DealEvent>, DealError> {
        use DealCommand as C;
        use DealEvent as E;
        let known_stage =
            |s: &str| if STAGES.contains(&s) { Ok(s.to_owned()) } else { Err(DealError::UnknownStage(s.to_owned())) };
        if let C::Create { name, customer_id, owner, stage, amount, currency } = cmd {
            if self.exists {
                return Err(DealError::AlreadyExists);
            }
            if name.trim().is_empty() {
                return Err(DealError::Empty("name"));
            }
            if amount.is_some_and(|a| a < 0) {
                return Err(DealError::NegativeAmount);
            }
            let stage = known_stage(stage.as_deref().unwrap_or(STAGES[0]))?;
            let currency = currency.unwrap_or_else(|| "EUR".into()).to_uppercase();
            return Ok(vec![E::DealCreated {
                name: name.trim().to_owned(),
                customer_id,
                owner,
                stage,
                amount,
                currency,
            }]);
        }
        if !self.exists {
            return Err(DealError::NotFound);
        }
        if self.status != DealStatus::Open {
            return Err(DealError::Closed(self.status));
        }
        Ok(match cmd {
            C::Create { .. } => unreachable!("handled above"),
            C::ChangeStage { to } => {
                let to = known_stage(&to)?;
                if to == self.stage {
                    vec![]
                } else {
                    vec![E::DealStageChanged { from: self.stage.clone(), to }]
                }
            }
            C::ChangeAmount { amount } => {
                if amount < 0 {
                    return Err(DealError::NegativeAmount);
                }
                if self.amount == Some(amount) {
                    vec![]
                } else {
                    vec![E::DealAmountChanged { from: self.amount, to: amount }]
                }
            }
            C::AssignOwner { owner } => {
                if owner.trim().is_empty() {
                    return Err(DealError::Empty("owner"));
                }
                if self.owner.as_deref() == Some(owner.as_str()) {
                    vec![]
                } else {
                    vec![E::DealOwnerAssigned { from: self.owner.clone(), to: owner }]
                }
            }
            C::Update { stage, amount, owner } => {
                let mut out = Vec::new();
                for cmd in [
                    amount.map(|amount| C::ChangeAmount { amount }),
                    owner.map(|owner| C::AssignOwner { owner }),
                    stage.map(|to| C::ChangeStage { to }),
                ]
                .into_iter()
                .flatten()
                {
                    out.extend(self.decide(cmd)?);
                }
                out
            }
            C::Win => match self.amount {
                Some(a) if a > 0 => vec![E::DealWon { amount: a }],
                _ => return Err(DealError::WonWithoutAmount),
            },
            C::Lose { reason } => vec![E::DealLost { reason }],
        })
    }

    pub fn apply(&mut self, ev: &DealEvent, version: u64) {
        use DealEvent as E;
        self.version = version;
        match ev {
            E::DealCreated { name, customer_id, owner, stage, amount, currency } => {
                self.exists = true;
                self.name = name.clone();
                self.customer_id = customer_id.clone();
                self.owner = owner.clone();
                self.stage = stage.clone();
                self.amount = *amount;
                self.currency = currency.clone();
            }
            E::DealStageChanged { to, .. } => self.stage = to.clone(),
            E::DealAmountChanged { to, .. } => self.amount = Some(*to),
            E::DealOwnerAssigned { to, .. } => self.owner = Some(to.clone()),
            E::DealWon { .. } => self.status = DealStatus::Won,
            E::DealLost { .. } => self.status = DealStatus::Lost,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn given(evs: &[DealEvent]) -> Deal {
        let mut d = Deal::new("d1");
        for (i, e) in evs.iter().enumerate() {
            d.apply(e, i as u64 + 1);
        }
        d
    }

    fn created(amount: Option<i64>) -> DealEvent {
        DealEvent::DealCreated {
            name: "Acme renewal".into(),
            customer_id: Some("c1".into()),
            owner: None,
            stage: "qualification".into(),
            amount,
            currency: "EUR".into(),
        }
    }

    #[test]
    fn cannot_win_without_an_amount() {
        assert_eq!(given(&[created(None)]).decide(DealCommand::Win), Err(DealError::WonWithoutAmount));
        assert_eq!(given(&[created(Some(0))]).decide(DealCommand::Win), Err(DealError::WonWithoutAmount));
        assert_eq!(
            given(&[created(Some(120_000))]).decide(DealCommand::Win),
            Ok(vec![DealEvent::DealWon { amount: 120_000 }])
        );
    }

    #[test]
    fn closed_deals_accept_no_change() {
        let d = given(&[created(Some(5)), DealEvent::DealWon { amount: 5 }]);
        assert_eq!(
            d.decide(DealCommand::ChangeStage { to: "proposal".into() }),
            Err(DealError::Closed(DealStatus::Won))
        );
        let d = given(&[created(None), DealEvent::DealLost { reason: None }]);
        assert_eq!(d.decide(DealCommand::Win), Err(DealError::Closed(DealStatus::Lost)));
    }

    #[test]
    fn stages_are_validated_and_moves_recorded() {
        let d = given(&[created(None)]);
        assert_eq!(
            d.decide(DealCommand::ChangeStage { to: "dreaming".into() }),
            Err(DealError::UnknownStage("dreaming".into()))
        );
        assert_eq!(
            d.decide(DealCommand::ChangeStage { to: "proposal".into() }),
            Ok(vec![DealEvent::DealStageChanged { from: "qualification".into(), to: "proposal".into() }])
        );
        assert_eq!(d.decide(DealCommand::ChangeStage { to: "qualification".into() }), Ok(vec![]));
        assert_eq!(Deal::new("x").decide(DealCommand::Win), Err(DealError::NotFound));
        assert_eq!(d.decide(DealCommand::ChangeAmount { amount: -1 }), Err(DealError::NegativeAmount));
    }

    #[test]
    fn update_is_all_or_nothing() {
        let d = given(&[created(None)]);
        let bad = DealCommand::Update { stage: Some("nowhere".into()), amount: Some(10), owner: None };
        assert_eq!(d.decide(bad), Err(DealError::UnknownStage("nowhere".into())));
        let good = DealCommand::Update { stage: Some("proposal".into()), amount: Some(10), owner: Some("kim".into()) };
        assert_eq!(d.decide(good).unwrap().len(), 3);
    }

    #[test]
    fn created_once() {
        let cmd = DealCommand::Create {
            name: "n".into(),
            customer_id: None,
            owner: None,
            stage: None,
            amount: None,
            currency: None,
        };
        assert!(Deal::new("d").decide(cmd.clone()).is_ok());
        assert_eq!(given(&[created(None)]).decide(cmd), Err(DealError::AlreadyExists));
    }
}
