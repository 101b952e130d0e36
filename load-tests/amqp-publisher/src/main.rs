//! `amqp-publisher URL setup EXCHANGE QUEUE ROUTING_KEY`: declare a durable topic exchange
//! and a durable queue bound to it; `purge QUEUE`: empty the queue;
//! `amqp-publisher URL publish EXCHANGE ROUTING_KEY SECONDS CONCURRENCY BODY_BYTES`: publish
//! persistent, mandatory messages for SECONDS with CONCURRENCY unconfirmed at most (as
//! CONCURRENCY HTTP clients of the gateway would have), and print `confirmed N seconds S`.
//!
//! One connection, one channel in confirm mode: what the gateway uses for a broker.

use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    QueuePurgeOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};

type Error = Box<dyn std::error::Error>;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).map(String::as_str).ok_or("missing argument; see the source's first lines");
    let connection = Connection::connect(arg(0)?, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    match arg(1)? {
        "setup" => {
            let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
            channel.exchange_declare(arg(2)?.into(), ExchangeKind::Topic, durable, FieldTable::default()).await?;
            let durable = QueueDeclareOptions { durable: true, ..Default::default() };
            channel.queue_declare(arg(3)?.into(), durable, FieldTable::default()).await?;
            let (queue, exchange, key) = (arg(3)?.into(), arg(2)?.into(), arg(4)?.into());
            channel.queue_bind(queue, exchange, key, QueueBindOptions::default(), FieldTable::default()).await?;
        }
        "purge" => {
            channel.queue_purge(arg(2)?.into(), QueuePurgeOptions::default()).await?;
        }
        "publish" => {
            let (exchange, key) = (arg(2)?, arg(3)?);
            let seconds: u64 = arg(4)?.parse()?;
            let concurrency: usize = arg(5)?.parse()?;
            let body = vec![b'x'; arg(6)?.parse()?];
            channel.confirm_select(ConfirmSelectOptions::default()).await?;
            let options = BasicPublishOptions { mandatory: true, ..Default::default() };
            let started = Instant::now();
            let deadline = started + Duration::from_secs(seconds);
            let mut pending = FuturesUnordered::new();
            let mut confirmed = 0u64;
            loop {
                while pending.len() < concurrency && Instant::now() < deadline {
                    let properties = BasicProperties::default().with_delivery_mode(2);
                    let confirm =
                        channel.basic_publish(exchange.into(), key.into(), options, &body, properties).await?;
                    pending.push(confirm);
                }
                match pending.next().await {
                    Some(confirmation) => {
                        if confirmation?.is_ack() {
                            confirmed += 1;
                        }
                    }
                    None => break,
                }
            }
            println!("confirmed {confirmed} seconds {:.3}", started.elapsed().as_secs_f64());
        }
        other => return Err(format!("unknown command {other}").into()),
    }
    connection.close(200, "done".into()).await?;
    Ok(())
}
