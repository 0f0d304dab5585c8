//! Host telemetry and orphans: live facts from a host, and what sand-boxer
//! left there (found by label and by workdir folder name).
use sandboxer_api::{HostInspect, ProblemCode, StaleItem};

use super::project::{LABEL, WORKDIR_LABEL};
use super::ssh::{sh_quote, HostPool};
use super::ComposeExtension;
use async_trait::async_trait;

use crate::extensions::{ExtError, HostInventory, HostSeen};

/// Whether `s` looks like a sandbox id (`sbx_` then letters and digits), so
/// names read from a host are never used in a path or command unchecked.
pub fn is_sandbox_id(s: &str) -> bool {
    s.strip_prefix("sbx_").is_some_and(|rest| {
        !rest.is_empty() && rest.len() <= 64 && rest.bytes().all(|b| b.is_ascii_alphanumeric())
    })
}

#[async_trait]
impl HostInventory for ComposeExtension {
    /// What is known about host `id` without contacting it.
    fn seen(&self, id: &str) -> Option<HostSeen> {
        let pool = self.pool(id)?;
        let seen = pool.seen();
        let tooling = self.cached_tooling(id);
        Some(HostSeen {
            reachable: seen.reachable,
            checked_at_ms: seen.at_ms,
            error: seen.error,
            engine: tooling.as_ref().map(|t| t.engine.clone()),
            compose: tooling.map(|t| t.compose),
        })
    }

    /// Live facts from host `id`.
    async fn inspect(&self, id: &str) -> Result<HostInspect, ExtError> {
        let pool = self.pool_or_err(id)?;
        let t = self.tooling(&pool).await?;
        let e = &t.engine;
        let wd = sh_quote(&pool.host.workdir);
        // Only what this deployment made (its workdir label), and all of it.
        let mine = format!(
            "--filter label={LABEL} --filter {}",
            sh_quote(&format!("label={WORKDIR_LABEL}={}", pool.host.workdir))
        );
        let script = format!(
            r#"echo "version=$({e} version --format '{{{{.Server.Version}}}}' 2>/dev/null)"
echo "load=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null)"
echo "mem_total=$(awk '/^MemTotal:/{{print $2*1024}}' /proc/meminfo 2>/dev/null)"
echo "mem_avail=$(awk '/^MemAvailable:/{{print $2*1024}}' /proc/meminfo 2>/dev/null)"
d={wd}; [ -d "$d" ] || d=$(dirname "$d")
echo "disk=$(df -Pk "$d" 2>/dev/null | awk 'NR==2{{print $2*1024, $4*1024}}')"
echo "containers=$({e} ps -aq {mine} | wc -l)"
echo "running=$({e} ps -q {mine} | wc -l)"
echo "workspaces=$(ls -1 {wd} 2>/dev/null | grep -c '^sbx_')"
"#
        );
        let out = pool
            .run(&script, ProblemCode::HostError, "inspecting")
            .await?;
        let mut r = HostInspect {
            host: id.to_owned(),
            engine: t.engine.clone(),
            compose: t.compose.clone(),
            ..HostInspect::default()
        };
        let num = |v: &str| v.trim().parse::<u64>().unwrap_or(0);
        for line in out.stdout_text().lines() {
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            match k {
                "version" => r.engine_version = v.trim().to_owned(),
                "load" => {
                    r.load = v
                        .split_whitespace()
                        .filter_map(|x| x.parse().ok())
                        .collect()
                }
                "mem_total" => r.memory_total_bytes = num(v),
                "mem_avail" => r.memory_available_bytes = num(v),
                "disk" => {
                    let mut it = v.split_whitespace();
                    r.disk_total_bytes = it.next().map(num).unwrap_or(0);
                    r.disk_available_bytes = it.next().map(num).unwrap_or(0);
                }
                "containers" => r.labelled_containers = num(v),
                "running" => r.running_containers = num(v),
                "workspaces" => r.workspaces = num(v),
                _ => {}
            }
        }
        Ok(r)
    }

    /// Everything on host `id` that belongs to some sandbox: labelled
    /// containers, networks and volumes, and `sbx_*` folders of the workdir.
    async fn owned(&self, id: &str) -> Result<Vec<StaleItem>, ExtError> {
        let pool = self.pool_or_err(id)?;
        let t = self.tooling(&pool).await?;
        let e = &t.engine;
        let fmt = |name: &str| format!("'{{{{{name}}}}}\t{{{{.Label \"{LABEL}\"}}}}'");
        let mine = format!(
            "--filter label={LABEL} --filter {}",
            sh_quote(&format!("label={WORKDIR_LABEL}={}", pool.host.workdir))
        );
        let script = format!(
            "{e} ps -a {mine} --format {c} | sed 's/^/container\t/' || exit 1\n\
             {e} network ls {mine} --format {n} | sed 's/^/network\t/' || exit 1\n\
             {e} volume ls {mine} --format {n} | sed 's/^/volume\t/' || exit 1\n\
             ls -1 {wd} 2>/dev/null | sed 's/^/workdir\t/'\n",
            c = fmt(".Names"),
            n = fmt(".Name"),
            wd = sh_quote(&pool.host.workdir),
        );
        let out = pool
            .run(
                &script,
                ProblemCode::HostError,
                "listing what sandboxes left",
            )
            .await?;
        Ok(parse_owned(&pool, &out.stdout_text()))
    }

    /// Remove what sandbox `sandbox_id` left on host `id` (by label and folder).
    async fn reap(&self, id: &str, sandbox_id: &str) -> Result<(), ExtError> {
        if !is_sandbox_id(sandbox_id) {
            return Err(ExtError::new(
                ProblemCode::InvalidSandboxId,
                format!("`{sandbox_id}` is not a sandbox id"),
            ));
        }
        let pool = self.pool_or_err(id)?;
        self.teardown_on(&pool, sandbox_id, None).await
    }
}

fn parse_owned(pool: &HostPool, text: &str) -> Vec<StaleItem> {
    let mut items = Vec::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, '\t');
        let (Some(kind), Some(name)) = (parts.next(), parts.next()) else {
            continue;
        };
        let (name, sandbox_id) = match kind {
            "workdir" => (
                format!("{}/{}", pool.host.workdir, name.trim()),
                name.trim().to_owned(),
            ),
            _ => (
                name.trim().to_owned(),
                parts.next().unwrap_or_default().trim().to_owned(),
            ),
        };
        if is_sandbox_id(&sandbox_id) {
            items.push(StaleItem {
                kind: kind.to_owned(),
                name,
                sandbox_id,
            });
        }
    }
    items
}

#[cfg(test)]
mod tests {
    use super::is_sandbox_id;

    #[test]
    fn sandbox_ids_are_checked() {
        assert!(is_sandbox_id("sbx_01JD4Z"));
        for bad in ["sbx_", "sbx_../x", "x_01", "sbx_a b", "sbx_a;rm"] {
            assert!(!is_sandbox_id(bad), "{bad}");
        }
    }
}
