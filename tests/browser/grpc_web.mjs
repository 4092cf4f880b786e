// Cross-origin gRPC-Web from a real browser: headless Chromium loads a page served on one
// loopback port and calls the gateway on another, with a custom metadata header, so the CORS
// preflight, the exposed headers and gRPC-Web framing are all exercised as a web app sees them.
//
// GATEWAY_BIN: the gateway binary; CHROMIUM: the browser (default /usr/bin/chromium).
import { spawn } from "node:child_process";
import { createServer } from "node:http";
import { createInterface } from "node:readline";
import puppeteer from "puppeteer-core";

const gatewayBin = process.env.GATEWAY_BIN ?? "target/debug/iggy-gateway";
const chromium = process.env.CHROMIUM ?? "/usr/bin/chromium";

// The page's own origin: a plain HTTP server on a free loopback port.
const page = createServer((_, res) => {
  res.writeHead(200, { "content-type": "text/html" });
  res.end("<!doctype html><title>iggy-gateway browser test</title>");
});
await new Promise((resolve) => page.listen(0, "127.0.0.1", resolve));
const origin = `http://127.0.0.1:${page.address().port}`;

const gateway = spawn(gatewayBin, [], {
  env: {
    ...process.env,
    HOST: "127.0.0.1",
    PORT: "0",
    DATA_DIR: ":memory:",
    LOG_FORMAT: "json",
    RUST_LOG: "info",
    IGGY_STREAM: "",
    CORS_ALLOWED_ORIGINS: origin,
  },
  stdio: ["ignore", "pipe", "inherit"],
});
const address = await new Promise((resolve, reject) => {
  const lines = createInterface({ input: gateway.stdout });
  lines.on("line", (line) => {
    try {
      const entry = JSON.parse(line);
      if (entry.fields?.address) resolve(entry.fields.address);
    } catch {}
  });
  gateway.on("exit", (code) => reject(new Error(`gateway exited with ${code}`)));
});
const gatewayUrl = `http://${address}`;

// Runs in the page: hand-framed gRPC-Web calls with fetch, as a browser client library does.
async function calls(gatewayUrl) {
  const text = new TextEncoder();
  const field = (number, value) => {
    const bytes = text.encode(value);
    return [(number << 3) | 2, bytes.length, ...bytes];
  };
  const frame = (message) => {
    const out = new Uint8Array(5 + message.length);
    new DataView(out.buffer).setUint32(1, message.length);
    out.set(message, 5);
    return out;
  };
  async function call(method, message) {
    const response = await fetch(`${gatewayUrl}/${method}`, {
      method: "POST",
      headers: {
        "content-type": "application/grpc-web+proto",
        "x-grpc-web": "1",
        // Application metadata: the preflight must allow it.
        "x-tenant": "blue",
      },
      body: frame(new Uint8Array(message)),
    });
    const body = new Uint8Array(await response.arrayBuffer());
    let data = new Uint8Array();
    let status = response.headers.get("grpc-status");
    let messageText = response.headers.get("grpc-message");
    for (let at = 0; at + 5 <= body.length; ) {
      const flags = body[at];
      const length = new DataView(body.buffer, at + 1, 4).getUint32(0);
      const payload = body.slice(at + 5, at + 5 + length);
      if (flags & 0x80) {
        for (const line of new TextDecoder().decode(payload).split("\r\n")) {
          const [name, ...rest] = line.split(":");
          if (name === "grpc-status") status = rest.join(":").trim();
          if (name === "grpc-message") messageText = rest.join(":").trim();
        }
      } else {
        data = payload;
      }
      at += 5 + length;
    }
    return {
      status,
      message: messageText,
      requestId: response.headers.get("x-request-id"),
      data: new TextDecoder().decode(data),
    };
  }
  return {
    created: await call("iggy.gateway.v1.StreamService/CreateStream", field(1, "browser")),
    listed: await call("iggy.gateway.v1.StreamService/ListStreams", []),
    missing: await call("iggy.gateway.v1.StreamService/GetStream", field(1, "missing")),
  };
}

const checks = [];
const check = (name, ok, detail) => {
  checks.push({ name, ok });
  console.log(`${ok ? "ok" : "FAILED"}  ${name}${ok ? "" : `: ${JSON.stringify(detail)}`}`);
};

const browser = await puppeteer.launch({
  executablePath: chromium,
  headless: true,
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});
try {
  const tab = await browser.newPage();
  await tab.goto(origin);
  const results = await tab.evaluate(calls, gatewayUrl);
  check("CreateStream cross-origin with custom metadata", results.created.status === "0" && results.created.data.includes("browser"), results.created);
  check("x-request-id is readable", Boolean(results.created.requestId), results.created);
  check("ListStreams sees the stream", results.listed.status === "0" && results.listed.data.includes("browser"), results.listed);
  check("NOT_FOUND status and message are readable", results.missing.status === "5" && (results.missing.message ?? "").includes("missing"), results.missing);
} catch (err) {
  check("the page ran its calls", false, String(err));
} finally {
  await browser.close();
  gateway.kill("SIGTERM");
  page.close();
}
const failed = checks.filter((c) => !c.ok).length;
console.log(`browser: ${checks.length - failed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
