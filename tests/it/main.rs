//! Integration tests: every one starts a real gateway on a loopback port and talks to it over
//! real sockets with real clients.

mod browsers;
mod clients;
mod compression;
mod connect;
mod connections;
mod cursors;
mod deploy;
mod durability;
mod etags;
mod events;
mod fake_iggy;
mod faults;
mod grpc_web;
mod health;
mod helpers;
mod hostile;
mod idempotency;
mod iggy_backend;
mod keys;
mod layers;
mod messages;
mod openapi;
mod ops;
mod parity;
mod parity_props;
mod proxy;
mod reflection;
mod rest;
mod rest_input;
mod rest_output;
mod routing;
mod streams;
mod subscribe;
mod tls;
mod topics;
