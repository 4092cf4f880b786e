//! What is acknowledged stays stored: across a graceful restart, and across `kill -9` of the
//! real binary.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
};

use iggy_gateway::proto::{self, message_service_client::MessageServiceClient};

use crate::helpers::{spawn_app, spawn_app_in, text_message, texts};

#[tokio::test]
async fn everything_acknowledged_is_there_after_a_restart() {
    let app = spawn_app().await;
    app.create_stream("orders").await;
    app.create_topic("orders", "created", 2).await;
    let ids = app
        .send_texts("orders", "created", 1, &["m0", "m1", "m2"])
        .await;
    let mut next = proto::PollMessagesRequest {
        stream: "orders".into(),
        topic: "created".into(),
        partition_id: 1,
        consumer: "billing".into(),
        strategy: proto::PollingStrategy::Next.into(),
        count: 1,
        auto_commit: true,
        ..Default::default()
    };
    assert_eq!(texts(&app.poll(next.clone()).await), ["m0"]);
    let dir = app.stop().await;

    let app = spawn_app_in(dir).await;
    let polled = app.poll_from("orders", "created", 1, 0, 10).await;
    assert_eq!(texts(&polled), ["m0", "m1", "m2"]);
    assert_eq!(
        polled
            .messages
            .iter()
            .map(|m| m.id.clone())
            .collect::<Vec<_>>(),
        ids
    );
    next.count = 10;
    assert_eq!(
        texts(&app.poll(next).await),
        ["m1", "m2"],
        "the consumer offset survived"
    );

    // Offsets and ids continue where they were.
    app.send_texts("orders", "created", 1, &["m3"]).await;
    assert_eq!(
        app.poll_from("orders", "created", 1, 3, 1).await.messages[0].offset,
        3
    );
    assert_eq!(app.create_stream("payments").await.id, 1);
    let topic = app.create_topic("orders", "shipped", 1).await;
    assert_eq!(topic.id, 1);
}

/// The gateway binary, run as an operator runs it.
pub struct Gateway {
    child: Child,
    pub addr: SocketAddr,
    /// Every JSON log line it has written so far.
    logs: Arc<Mutex<Vec<String>>>,
}

/// A test that fails must not leave its gateway running: the process holds the test binary's
/// stderr open, so `cargo test` would wait for it long after the tests have ended.
impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Gateway {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the process to exit on its own.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        self.child.wait().expect("waits")
    }

    /// Sends SIGTERM and waits (off the runtime, so the test's clients go on answering the
    /// gateway's GOAWAY and pings) for the exit code.
    pub async fn terminate(mut self) -> Option<i32> {
        let term = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("kill runs");
        assert!(term.success());
        tokio::task::spawn_blocking(move || self.wait().code())
            .await
            .expect("joined")
    }

    pub fn start(data_dir: &std::path::Path) -> Self {
        Self::start_with(data_dir, &[])
    }

    /// Starts the binary with extra environment variables.
    pub fn start_with(data_dir: &std::path::Path, env: &[(&str, String)]) -> Self {
        Self::start_command(
            Command::new(env!("CARGO_BIN_EXE_iggy-gateway")),
            data_dir,
            env,
        )
    }

    /// Starts the binary with its open-files limit (soft and hard) set to `limit`.
    pub fn start_with_open_files(
        limit: u32,
        data_dir: &std::path::Path,
        env: &[(&str, String)],
    ) -> Self {
        let mut command = Command::new("prlimit");
        command
            .arg(format!("--nofile={limit}:{limit}"))
            .arg("--")
            .arg(env!("CARGO_BIN_EXE_iggy-gateway"));
        Self::start_command(command, data_dir, env)
    }

    fn start_command(
        mut command: Command,
        data_dir: &std::path::Path,
        env: &[(&str, String)],
    ) -> Self {
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command
            .env("PORT", "0")
            .env("HOST", "127.0.0.1")
            .env("DATA_DIR", data_dir)
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .env_remove("IGGY_CONNECTION_STRING")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("gateway binary starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let addr = loop {
            let line = lines
                .next()
                .expect("the gateway logs its address before anything else ends")
                .expect("a log line");
            logs.lock().expect("logs").push(line.clone());
            let entry: serde_json::Value = serde_json::from_str(&line).expect("JSON log line");
            if let Some(addr) = entry["fields"]["address"].as_str() {
                break addr.parse().expect("a socket address");
            }
        };
        // Keep draining the logs so the gateway never blocks on a full pipe.
        let kept = Arc::clone(&logs);
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                kept.lock().expect("logs").push(line);
            }
        });
        Self { child, addr, logs }
    }

    /// The log lines written so far that contain `needle`.
    pub fn logged(&self, needle: &str) -> Vec<String> {
        self.logs
            .lock()
            .expect("logs")
            .iter()
            .filter(|line| line.contains(needle))
            .cloned()
            .collect()
    }

    /// CPU time (user + system) the process has used, in clock ticks (1/100 s on Linux).
    pub fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).expect("stat");
        // Fields after the command name, which is in parentheses and may hold spaces.
        let rest = &stat[stat.rfind(')').expect("comm") + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let utime: u64 = fields[11].parse().expect("utime");
        let stime: u64 = fields[12].parse().expect("stime");
        utime + stime
    }

    async fn client(&self) -> MessageServiceClient<tonic::transport::Channel> {
        MessageServiceClient::connect(format!("http://{}", self.addr))
            .await
            .expect("connects")
    }

    /// A channel to the gateway, with stream "orders" and its one-partition topic "created".
    pub async fn channel_with_topic(&self) -> tonic::transport::Channel {
        let channel = tonic::transport::Channel::from_shared(format!("http://{}", self.addr))
            .expect("uri")
            .connect()
            .await
            .expect("connects");
        proto::stream_service_client::StreamServiceClient::new(channel.clone())
            .create_stream(proto::CreateStreamRequest {
                name: "orders".into(),
            })
            .await
            .expect("stream");
        proto::topic_service_client::TopicServiceClient::new(channel.clone())
            .create_topic(proto::CreateTopicRequest {
                stream: "orders".into(),
                name: "created".into(),
                partitions_count: 1,
                ..Default::default()
            })
            .await
            .expect("topic");
        channel
    }

    pub fn kill_hard(mut self) {
        // SIGKILL: no shutdown code runs.
        self.child.kill().expect("killed");
        self.child.wait().expect("reaped");
    }
}

#[tokio::test]
async fn acknowledged_batches_survive_kill_9() {
    let dir = tempfile::tempdir().expect("temp dir");
    let gateway = Gateway::start(dir.path());
    gateway.channel_with_topic().await;
    let mut client = gateway.client().await;
    let mut acknowledged = Vec::new();
    for batch in 0..20 {
        let messages = (0..50)
            .map(|i| text_message(&format!("{batch}-{i}")))
            .collect();
        let ids = client
            .send_messages(proto::SendMessagesRequest {
                stream: "orders".into(),
                topic: "created".into(),
                partitioning: None,
                messages,
            })
            .await
            .expect("acknowledged")
            .into_inner()
            .ids;
        acknowledged.extend(ids);
    }
    gateway.kill_hard();

    let gateway = Gateway::start(dir.path());
    let mut client = gateway.client().await;
    let polled = client
        .poll_messages(proto::PollMessagesRequest {
            stream: "orders".into(),
            topic: "created".into(),
            count: 1000,
            ..Default::default()
        })
        .await
        .expect("polled")
        .into_inner();
    let ids: Vec<String> = polled.messages.iter().map(|m| m.id.clone()).collect();
    assert_eq!(
        ids, acknowledged,
        "every acknowledged message, in order, once"
    );
    assert_eq!(polled.messages.last().map(|m| m.offset), Some(999));
    gateway.kill_hard();
}

#[tokio::test]
async fn a_second_gateway_on_the_same_data_dir_exits_69() {
    let dir = tempfile::tempdir().expect("temp dir");
    let first = Gateway::start(dir.path());
    let second = Command::new(env!("CARGO_BIN_EXE_iggy-gateway"))
        .env("PORT", "0")
        .env("DATA_DIR", dir.path())
        .env_remove("IGGY_CONNECTION_STRING")
        .output()
        .expect("runs");
    assert_eq!(second.status.code(), Some(69), "EX_UNAVAILABLE");
    first.kill_hard();
}

#[test]
fn a_bad_setting_exits_78_naming_it() {
    let output = Command::new(env!("CARGO_BIN_EXE_iggy-gateway"))
        .env("PORT", "not-a-port")
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(78), "EX_CONFIG");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not-a-port"), "{stderr}");
}
