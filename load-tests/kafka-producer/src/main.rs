//! `kafka-producer BOOTSTRAP setup TOPIC`: create the topic (one partition);
//! `kafka-producer BOOTSTRAP produce TOPIC SECONDS CONCURRENCY BODY_BYTES`: produce keyed
//! records for SECONDS with CONCURRENCY unacknowledged at most (as CONCURRENCY HTTP clients of
//! the gateway would have), and print `confirmed N seconds S`.
//!
//! The producer settings are the gateway's: idempotent, `acks=all`.

use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

type Error = Box<dyn std::error::Error>;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).map(String::as_str).ok_or("missing argument; see the source's first lines");
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", arg(0)?);
    match arg(1)? {
        "setup" => {
            let admin: AdminClient<DefaultClientContext> = config.create()?;
            let topic = NewTopic::new(arg(2)?, 1, TopicReplication::Fixed(1));
            for result in admin.create_topics([&topic], &AdminOptions::new()).await? {
                if let Err((name, code)) = result {
                    if code != rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists {
                        return Err(format!("cannot create {name}: {code}").into());
                    }
                }
            }
        }
        "produce" => {
            let topic = arg(2)?;
            let seconds: u64 = arg(3)?.parse()?;
            let concurrency: usize = arg(4)?.parse()?;
            let body = vec![b'x'; arg(5)?.parse()?];
            let producer: FutureProducer = config
                .set("enable.idempotence", "true")
                .set("acks", "all")
                .set("allow.auto.create.topics", "false")
                .create()?;
            let started = Instant::now();
            let deadline = started + Duration::from_secs(seconds);
            let mut pending = FuturesUnordered::new();
            let mut confirmed = 0u64;
            loop {
                while pending.len() < concurrency && Instant::now() < deadline {
                    let (producer, body) = (&producer, &body);
                    pending.push(async move {
                        let record = FutureRecord::to(topic).key("k").payload(body.as_slice());
                        producer.send(record, Duration::from_secs(10)).await
                    });
                }
                match pending.next().await {
                    Some(Ok(_)) => confirmed += 1,
                    Some(Err((e, _))) => return Err(e.into()),
                    None => break,
                }
            }
            println!("confirmed {confirmed} seconds {:.3}", started.elapsed().as_secs_f64());
        }
        other => return Err(format!("unknown command {other}").into()),
    }
    Ok(())
}
