//! The Kafka benchmark's other side, written on rdkafka alone:
//!
//! `kafka_bench load BROKERS TOPIC PARTITIONS < records.jsonl` produces each line as one
//! message, round-robin over the partitions.
//!
//! `kafka_bench pass BROKERS INPUT OUTPUT GROUP` is the plain pass-through kubetag is
//! compared with: it consumes INPUT as a group member and produces every message to
//! OUTPUT unchanged, with the client settings kubetag uses, until every partition is read
//! to its end and every message is delivered; it prints how many it passed.

use std::collections::BTreeSet;
use std::io::BufRead;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["load", brokers, topic, partitions] => load(brokers, topic, partitions.parse().unwrap()),
        ["pass", brokers, input, output, group] => pass(brokers, input, output, group),
        _ => {
            eprintln!(
                "usage: kafka_bench load BROKERS TOPIC PARTITIONS | pass BROKERS IN OUT GROUP"
            );
            std::process::exit(2);
        }
    }
}

/// kubetag's producer settings (src/sink/kafka.rs).
fn producer(brokers: &str) -> BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("queue.buffering.max.messages", "20000")
        .set("queue.buffering.max.kbytes", "32768")
        .set("linger.ms", "5")
        .set("enable.idempotence", "false")
        .set("acks", "all")
        .create()
        .expect("producer")
}

fn send(producer: &BaseProducer, mut record: BaseRecord<'_, [u8], [u8]>) {
    loop {
        match producer.send(record) {
            Ok(()) => return,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                producer.poll(Duration::from_millis(10));
            }
            Err((e, _)) => panic!("produce: {e}"),
        }
    }
}

fn load(brokers: &str, topic: &str, partitions: i32) {
    let producer = producer(brokers);
    let stdin = std::io::stdin().lock();
    for (i, line) in stdin.split(b'\n').enumerate() {
        let line = line.expect("stdin");
        let record = BaseRecord::to(topic).payload(&line[..]).key(&b""[..]);
        send(&producer, record.partition(i as i32 % partitions));
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(120)).expect("every record delivered");
}

fn pass(brokers: &str, input: &str, output: &str, group: &str) {
    // kubetag's consumer settings (src/source/kafka.rs), reading to the end.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "100")
        .set("enable.partition.eof", "true")
        .create()
        .expect("consumer");
    consumer.subscribe(&[input]).expect("subscribe");
    let producer = producer(brokers);
    let mut ended = BTreeSet::new();
    let mut passed = 0u64;
    loop {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                ended.remove(&message.partition());
                let payload = message.payload().unwrap_or_default();
                let key = message.key().unwrap_or_default();
                send(&producer, BaseRecord::to(output).payload(payload).key(key));
                producer.poll(Duration::ZERO);
                passed += 1;
            }
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                ended.insert(partition);
                let assigned = consumer.assignment().map(|a| a.count()).unwrap_or(0);
                if assigned > 0 && ended.len() == assigned {
                    break;
                }
            }
            Some(Err(e)) => eprintln!("consume: {e}"),
            None => {}
        }
    }
    producer.flush(Duration::from_secs(120)).expect("every record delivered");
    println!("{passed}");
}
