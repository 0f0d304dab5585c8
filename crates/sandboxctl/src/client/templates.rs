//! `/v1/templates`: build (with the build's output as it comes), list,
//! show, remove.
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, CONTENT_TYPE};
use reqwest::{Method, StatusCode};
use sandboxer_api::{BuildTemplate, Page, Problem, Template};

use super::access::{find_event_end, parse_raw};
use super::error::api_error;
use super::{check_id, to_json, Client, ClientError};

/// What a template is built from.
pub enum TemplateSource {
    /// A Dockerfile's text alone.
    Dockerfile(String),
    /// A tar of the build context, a `Dockerfile` at its root.
    Context(Vec<u8>),
}

impl Client {
    /// `POST /v1/templates` with `Accept: text/event-stream`: builds
    /// template `id`, handing each line of the build's output to `on_log`.
    pub async fn build_template(
        &self,
        id: &str,
        source: TemplateSource,
        mut on_log: impl FnMut(&str),
    ) -> Result<Template, ClientError> {
        let mut h = HeaderMap::new();
        h.insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
        let (url, body, json) = match source {
            TemplateSource::Dockerfile(text) => (
                self.endpoint(&["v1", "templates"], &[]),
                None,
                Some(to_json(&BuildTemplate {
                    id: id.to_owned(),
                    dockerfile: text,
                })?),
            ),
            TemplateSource::Context(tar) => {
                h.insert(CONTENT_TYPE, HeaderValue::from_static("application/x-tar"));
                (
                    self.endpoint(&["v1", "templates"], &[("id", id.to_owned())]),
                    Some(reqwest::Body::from(tar)),
                    None,
                )
            }
        };
        let mut resp = self.open_stream(Method::POST, url, h, body, json).await?;
        let mut buf = Vec::new();
        loop {
            while let Some((len, blank)) = find_event_end(&buf) {
                let raw: Vec<u8> = buf.drain(..len + blank).collect();
                let Some((name, data)) = parse_raw(&raw[..len]) else {
                    continue;
                };
                match name.as_str() {
                    "log" => on_log(&data),
                    "done" => {
                        return serde_json::from_str(&data)
                            .map_err(|e| ClientError::Decode(format!("the template: {e}")))
                    }
                    "error" => {
                        return Err(match serde_json::from_str::<Problem>(&data) {
                            Ok(problem) => ClientError::Api {
                                status: problem.status,
                                problem,
                            },
                            Err(_) => api_error(StatusCode::UNPROCESSABLE_ENTITY, data.as_bytes()),
                        })
                    }
                    _ => {}
                }
            }
            match resp.chunk().await {
                Ok(Some(chunk)) => buf.extend_from_slice(&chunk),
                Ok(None) => {
                    return Err(ClientError::Decode(
                        "the build's stream ended without its outcome".into(),
                    ))
                }
                Err(e) => return Err(ClientError::Decode(format!("the stream broke off: {e}"))),
            }
        }
    }

    /// `GET /v1/templates`.
    pub async fn templates(&self) -> Result<Page<Template>, ClientError> {
        let url = self.endpoint(&["v1", "templates"], &[]);
        self.call_ok(Method::GET, url, None, None).await
    }

    /// `GET /v1/templates/{id}`.
    pub async fn template(&self, id: &str) -> Result<Template, ClientError> {
        let url = self.endpoint(&["v1", "templates", check_id(id)?], &[]);
        self.call_ok(Method::GET, url, None, None).await
    }

    /// `DELETE /v1/templates/{id}`.
    pub async fn delete_template(&self, id: &str) -> Result<(), ClientError> {
        let url = self.endpoint(&["v1", "templates", check_id(id)?], &[]);
        let (status, body) = self
            .send(Method::DELETE, &url, None, HeaderMap::new(), None)
            .await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(api_error(status, &body))
        }
    }
}
