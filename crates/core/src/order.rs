//! The Order aggregate: placed → payment authorised (or failed, and retried) → paid → shipped →
//! delivered, with cancellation before shipping and refunds after payment.
//!
//! Amounts are integers in the currency's minor unit; refunds never exceed what was paid.

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub const EVENT_TYPES: &[&str] = &[
    "OrderPlaced",
    "PaymentAuthorized",
    "PaymentFailed",
    "OrderPaid",
    "OrderShipped",
    "OrderDelivered",
    "OrderRefunded",
    "OrderCancelled",
];

pub fn stream_of(order_id: &str) -> String {
    format!("order-{order_id}")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    #[default]
    None,
    Placed,
    PaymentAuthorized,
    PaymentFailed,
    Paid,
    Shipped,
    Delivered,
    Refunded,
    Cancelled,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum OrderEvent {
    OrderPlaced {
        customer_id: String,
        #[serde(default)]
        items: Vec<Value>,
        total: i64,
        currency: String,
    },
    PaymentAuthorized {
        amount: i64,
    },
    PaymentFailed {
        #[serde(default)]
        reason: Option<String>,
    },
    OrderPaid {
        amount: i64,
    },
    OrderShipped {
        #[serde(default)]
        carrier: Option<String>,
    },
    OrderDelivered {},
    OrderRefunded {
        amount: i64,
    },
    OrderCancelled {
        #[serde(default)]
        reason: Option<String>,
    },
}

impl OrderEvent {
    pub fn to_parts(&self) -> (String, Value) {
        crate::to_parts(self)
    }
    pub fn from_parts(event_type: &str, data: &Value) -> Result<Self, crate::DecodeError> {
        crate::from_parts(event_type, data)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum OrderCommand {
    Place { customer_id: String, items: Vec<Value>, total: i64, currency: String },
    AuthorizePayment,
    FailPayment { reason: Option<String> },
    MarkPaid,
    Ship { carrier: Option<String> },
    Deliver,
    Refund { amount: i64 },
    Cancel { reason: Option<String> },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderError {
    #[error("order already placed")]
    AlreadyPlaced,
    #[error("order not found")]
    NotFound,
    #[error("an order that is {status:?} cannot {action}")]
    InvalidTransition { status: OrderStatus, action: &'static str },
    #[error("refund of {requested} exceeds the {refundable} still refundable")]
    RefundTooLarge { requested: i64, refundable: i64 },
    #[error("amount must be positive")]
    NonPositiveAmount,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Order {
    pub id: String,
    pub customer_id: String,
    pub status: OrderStatus,
    pub total: i64,
    pub currency: String,
    pub refunded: i64,
    /// Whether the order had been paid when it was cancelled (so a refund is due).
    #[serde(default)]
    pub paid_before_cancel: bool,
    pub version: u64,
}

impl Order {
    pub fn new(id: impl Into<String>) -> Self {
        Order { id: id.into(), ..Default::default() }
    }

    pub fn decide(&self, cmd: OrderCommand) -> Result<Vec<OrderEvent>, OrderError> {
        use OrderCommand as C;
        use OrderEvent as E;
        use OrderStatus as S;
        let bad = |action| Err(OrderError::InvalidTransition { status: self.status, action });
        if self.status == S::None && !matches!(cmd, C::Place { .. }) {
            return Err(OrderError::NotFound);
        }
        Ok(match cmd {
            C::Place { customer_id, items, total, currency } => {
                if self.status != S::None {
                    return Err(OrderError::AlreadyPlaced);
                }
                if total < 0 {
                    return Err(OrderError::NonPositiveAmount);
                }
                vec![E::OrderPlaced { customer_id, items, total, currency: currency.to_uppercase() }]
            }
            C::AuthorizePayment => match self.status {
                S::Placed | S::PaymentFailed => vec![E::PaymentAuthorized { amount: self.total }],
                _ => return bad("authorize payment"),
            },
            C::FailPayment { reason } => match self.status {
                S::Placed | S::PaymentAuthorized | S::PaymentFailed => vec![E::PaymentFailed { reason }],
                _ => return bad("fail payment"),
            },
            C::MarkPaid => match self.status {
                S::Placed | S::PaymentAuthorized => vec![E::OrderPaid { amount: self.total }],
                _ => return bad("be paid"),
            },
            C::Ship { carrier } => match self.status {
                S::Paid => vec![E::OrderShipped { carrier }],
                _ => return bad("ship"),
            },
            C::Deliver => match self.status {
                S::Shipped => vec![E::OrderDelivered {}],
                _ => return bad("be delivered"),
            },
            C::Cancel { reason } => match self.status {
                S::Placed | S::PaymentAuthorized | S::PaymentFailed | S::Paid => vec![E::OrderCancelled { reason }],
                _ => return bad("be cancelled"),
            },
            C::Refund { amount } => {
                if amount <= 0 {
                    return Err(OrderError::NonPositiveAmount);
                }
                match self.status {
                    S::Paid | S::Shipped | S::Delivered | S::Refunded | S::Cancelled if self.was_paid() => {
                        let refundable = self.total.saturating_sub(self.refunded);
                        if amount > refundable {
                            return Err(OrderError::RefundTooLarge { requested: amount, refundable });
                        }
                        vec![E::OrderRefunded { amount }]
                    }
                    _ => return bad("be refunded"),
                }
            }
        })
    }

    /// Whether money was taken: refunds are only possible then.
    fn was_paid(&self) -> bool {
        matches!(self.status, OrderStatus::Paid | OrderStatus::Shipped | OrderStatus::Delivered | OrderStatus::Refunded)
            || (self.status == OrderStatus::Cancelled && self.paid_before_cancel)
    }

    pub fn apply(&mut self, ev: &OrderEvent, version: u64) {
        use OrderEvent as E;
        self.version = version;
        match ev {
            E::OrderPlaced { customer_id, total, currency, .. } => {
                self.customer_id = customer_id.clone();
                self.total = *total;
                self.currency = currency.clone();
                self.status = OrderStatus::Placed;
            }
            E::PaymentAuthorized { .. } => self.status = OrderStatus::PaymentAuthorized,
            E::PaymentFailed { .. } => self.status = OrderStatus::PaymentFailed,
            E::OrderPaid { .. } => self.status = OrderStatus::Paid,
            E::OrderShipped { .. } => self.status = OrderStatus::Shipped,
            E::OrderDelivered {} => self.status = OrderStatus::Delivered,
            E::OrderRefunded { amount } => {
                self.refunded = self.refunded.saturating_add(*amount);
                if self.status != OrderStatus::Cancelled {
                    self.status = OrderStatus::Refunded;
                }
            }
            E::OrderCancelled { .. } => {
                self.paid_before_cancel = self.status == OrderStatus::Paid;
                self.status = OrderStatus::Cancelled;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(cmds: Vec<OrderCommand>) -> Result<Order, OrderError> {
        let mut o = Order::new("o1");
        for c in cmds {
            for e in o.decide(c)? {
                let v = o.version + 1;
                o.apply(&e, v);
            }
        }
        Ok(o)
    }

    fn place() -> OrderCommand {
        OrderCommand::Place { customer_id: "c1".into(), items: vec![], total: 5000, currency: "gbp".into() }
    }

    #[test]
    fn happy_path() {
        let o = run(vec![
            place(),
            OrderCommand::AuthorizePayment,
            OrderCommand::MarkPaid,
            OrderCommand::Ship { carrier: None },
            OrderCommand::Deliver,
        ])
        .unwrap();
        assert_eq!((o.status, o.version, o.currency.as_str()), (OrderStatus::Delivered, 5, "GBP"));
    }

    #[test]
    fn failed_payment_can_be_retried() {
        let o = run(vec![
            place(),
            OrderCommand::FailPayment { reason: None },
            OrderCommand::AuthorizePayment,
            OrderCommand::MarkPaid,
        ])
        .unwrap();
        assert_eq!(o.status, OrderStatus::Paid);
    }

    #[test]
    fn no_shipping_before_payment_no_cancel_after_shipping() {
        assert_eq!(
            run(vec![place(), OrderCommand::Ship { carrier: None }]).unwrap_err(),
            OrderError::InvalidTransition { status: OrderStatus::Placed, action: "ship" }
        );
        let e = run(vec![
            place(),
            OrderCommand::MarkPaid,
            OrderCommand::Ship { carrier: None },
            OrderCommand::Cancel { reason: None },
        ])
        .unwrap_err();
        assert_eq!(e, OrderError::InvalidTransition { status: OrderStatus::Shipped, action: "be cancelled" });
    }

    #[test]
    fn refunds_bounded_by_what_was_paid() {
        assert!(matches!(
            run(vec![place(), OrderCommand::Refund { amount: 1 }]),
            Err(OrderError::InvalidTransition { .. })
        ));
        let o = run(vec![
            place(),
            OrderCommand::MarkPaid,
            OrderCommand::Refund { amount: 2000 },
            OrderCommand::Refund { amount: 3000 },
        ])
        .unwrap();
        assert_eq!((o.refunded, o.status), (5000, OrderStatus::Refunded));
        let e = run(vec![place(), OrderCommand::MarkPaid, OrderCommand::Refund { amount: 5001 }]).unwrap_err();
        assert_eq!(e, OrderError::RefundTooLarge { requested: 5001, refundable: 5000 });
        // Cancelled after payment: the money goes back.
        let o = run(vec![
            place(),
            OrderCommand::MarkPaid,
            OrderCommand::Cancel { reason: None },
            OrderCommand::Refund { amount: 5000 },
        ])
        .unwrap();
        assert_eq!(o.status, OrderStatus::Cancelled);
        assert!(run(vec![place(), OrderCommand::Cancel { reason: None }, OrderCommand::Refund { amount: 1 }]).is_err());
    }

    #[test]
    fn unknown_orders_and_double_placement() {
        assert_eq!(Order::new("x").decide(OrderCommand::Deliver), Err(OrderError::NotFound));
        assert_eq!(run(vec![place(), place()]).unwrap_err(), OrderError::AlreadyPlaced);
    }
}
