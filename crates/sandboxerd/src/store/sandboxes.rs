//! Sandbox rows: insert (with idempotency, caps and escrow), read, list,
//! transitions with their events and outbox rows, TTL and activity.
//! (Longer than 600 lines: the create and transition queries each keep
//! their idempotency, cap and escrow steps in one transaction, which reads
//! best whole.)
use super::*;

/// A sandbox about to be inserted.
#[derive(Debug, Clone)]
pub struct NewSandbox {
    pub id: String,
    pub profile: String,
    pub profile_version: u32,
    pub extension: String,
    pub host: String,
    pub consumer: Consumer,
    pub inputs: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub now: i64,
    pub expires_at: i64,
    pub max_expires_at: i64,
    pub estimate_credits: i64,
    /// `placement.host` of the request: the sandbox never moves off it.
    pub placement_host: Option<String>,
    /// Its name, unique among the project's live sandboxes.
    pub name: Option<String>,
    /// When the name is taken: answer that sandbox (`true`) or refuse.
    pub reuse_by_name: bool,
}

/// What an idempotent create found.
#[derive(Debug)]
pub enum Created {
    /// A new sandbox was inserted.
    New(Sandbox),
    /// The same key and body were seen before: this is that sandbox.
    Replayed(Sandbox),
    /// The key was used before with another body.
    KeyConflict,
    /// A live sandbox of the project has this name (and reuse was asked).
    Existing(Sandbox),
    /// A live sandbox of the project has this name: its id.
    NameTaken(String),
    /// The project already has `cap` live sandboxes.
    OverCap { cap: i64 },
    /// Credits are enforced and the project cannot cover the estimate.
    InsufficientCredits(Shortfall),
}

/// Filters of `GET /v1/sandboxes`.
#[derive(Debug, Default, Clone)]
pub struct ListFilter {
    pub states: Vec<SandboxState>,
    pub include_all: bool,
    pub profile: Option<String>,
    pub extension: Option<String>,
    pub host: Option<String>,
    pub project: Option<String>,
    pub name: Option<String>,
    pub labels: Vec<(String, String)>,
    pub cursor: Option<String>,
    pub limit: u32,
}

/// A state change and the columns that go with it.
#[derive(Debug, Default)]
pub struct Change<'a> {
    pub reason: &'a str,
    /// Only when the row's generation is this one (a provision task of an
    /// older generation must not touch a recreated sandbox).
    pub generation: Option<u32>,
    pub set_ready_at: bool,
    pub set_destroyed_at: bool,
    pub reachability: Option<Option<serde_json::Value>>,
    pub backend_state: Option<Option<serde_json::Value>>,
    pub failure: Option<Option<Failure>>,
    /// Recreate: bump the generation and start a fresh lifetime.
    pub new_generation: Option<NewLifetime>,
    /// Only when `expires_at` is at or before this time (expiry by the reaper).
    pub expired_by: Option<i64>,
    /// Only when the last activity is at or before this time (idle reap).
    pub idle_since: Option<i64>,
    /// Set (or clear) the next teardown attempt and the attempts so far.
    pub teardown_retry: Option<Option<(i64, i64)>>,
    /// With `new_generation`: settle the old generation's use and reserve
    /// the new lifetime's estimate, in the same transaction.
    pub escrow: Option<Escrow>,
    /// This transition decides the sandbox's end: why, for people and in
    /// its JSON and deciding event. The first one set stays.
    pub termination: Option<(TerminationReason, &'a str)>,
    /// Pause (the pause begins now) or resume (the pause ends now: its
    /// length is added to the generation's paused time; a stopped clock
    /// starts again with the TTL it had left).
    pub pause: Option<PauseStep>,
    /// With a pause: who paused it (`user`, `credits_exhausted`).
    pub pause_reason: Option<&'a str>,
    /// With a pause: `ttl.pause_stops_clock`, and the longest the pause may
    /// last (milliseconds). The TTL left is kept, `expires_at` becomes the
    /// end of the longest pause, and the paused time of that pause is added
    /// to the estimate (and reserved, with `escrow`): refused with
    /// `InsufficientCredits` when it cannot be.
    pub pause_clock: Option<i64>,
    /// The budget step-down: only when the project's balance is at or below
    /// zero (`Some(true)`) or above it (`Some(false)`), read in the same
    /// transaction (a grant since the step-down's list was read wins).
    pub budget: Option<bool>,
}

/// See [`Change::pause`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseStep {
    Pause,
    Resume,
}

/// The lifetime a recreated sandbox starts with.
#[derive(Debug, Clone, Copy)]
pub struct NewLifetime {
    pub expires_at: i64,
    pub max_expires_at: i64,
}

/// Outcome of a conditional transition.
#[derive(Debug)]
pub enum Transition {
    Done {
        from: SandboxState,
        sandbox: Sandbox,
    },
    /// The row exists but was in a state (or generation) the change does not apply to.
    Refused(Sandbox),
    NotFound,
    /// Nothing was written: the change needs credits the project cannot cover.
    InsufficientCredits(Shortfall),
}

pub(crate) const SELECT: &str = "SELECT id, profile, profile_version, extension, host, state, actor_type, actor, project, \
     inputs, labels, generation, created_at, updated_at, ready_at, expires_at, max_expires_at, destroyed_at, \
     last_activity_at, reachability, backend_state, failure_code, failure_message, estimate_credits, accrued_credits, \
     teardown_attempts, next_teardown_at, rate_centicredits, ended_at, settled_at, route, pool, \
     termination_reason, termination_at, termination_detail, name, exit_snapshot, paused_at, paused_ms, \
     paused_rate_centicredits, pause_reason, ttl_left_ms, pause_reserve_credits FROM sandboxes";

impl Db {
    /// Insert a sandbox in `requested`, honouring an `Idempotency-Key`.
    pub async fn create_sandbox(
        &self,
        new: NewSandbox,
        idempotency: Option<(&str, &str)>,
    ) -> Result<Created, StoreError> {
        self.create_sandbox_capped(new, idempotency, None).await
    }

    /// [`Db::create_sandbox`], refused when the project already has `cap`
    /// live sandboxes (counted in the same transaction, so concurrent
    /// creates can never overshoot it).
    pub async fn create_sandbox_capped(
        &self,
        new: NewSandbox,
        idempotency: Option<(&str, &str)>,
        cap: Option<i64>,
    ) -> Result<Created, StoreError> {
        self.create_sandbox_billed(new, idempotency, cap, &Billing::default())
            .await
    }

    /// [`Db::create_sandbox_capped`] that also records the sandbox's rate
    /// and route and, with `billing.enforce`, reserves its estimate in the
    /// same transaction: the available balance is read and reduced there,
    /// so concurrent creates can never reserve more than the project has.
    pub async fn create_sandbox_billed(
        &self,
        new: NewSandbox,
        idempotency: Option<(&str, &str)>,
        cap: Option<i64>,
        billing: &Billing,
    ) -> Result<Created, StoreError> {
        let mut tx = self.writer.begin().await?;
        if let Some(refused) = self.admit(&mut tx, &new, idempotency, cap, billing).await? {
            tx.rollback().await?;
            return Ok(refused);
        }
        sqlx::query(
            "INSERT INTO sandboxes (id, profile, profile_version, extension, host, state, actor_type, actor, project, \
             inputs, labels, generation, created_at, updated_at, expires_at, max_expires_at, last_activity_at, estimate_credits, \
             rate_centicredits, route, placement_host, name, paused_rate_centicredits) \
             VALUES (?, ?, ?, ?, ?, 'requested', ?, ?, ?, ?, ?, 1, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&new.id)
        .bind(&new.profile)
        .bind(new.profile_version)
        .bind(&new.extension)
        .bind(&new.host)
        .bind(&new.consumer.actor_type)
        .bind(&new.consumer.actor)
        .bind(&new.consumer.project)
        .bind(serde_json::to_string(&new.inputs).unwrap_or_else(|_| "{}".into()))
        .bind(serde_json::to_string(&new.labels).unwrap_or_else(|_| "{}".into()))
        .bind(new.now)
        .bind(new.now)
        .bind(new.expires_at)
        .bind(new.max_expires_at)
        .bind(new.now)
        .bind(new.estimate_credits)
        .bind(billing.rate_centicredits)
        .bind(
            billing
                .route
                .as_ref()
                .and_then(|r| serde_json::to_string(r).ok()),
        )
        .bind(&new.placement_host)
        .bind(&new.name)
        .bind(billing.paused_rate_centicredits)
        .execute(&mut *tx)
        .await?;
        if billing.enforce && new.estimate_credits > 0 {
            ledger::reserve_new(
                &mut tx,
                &new.id,
                &new.consumer.project,
                new.estimate_credits,
                new.now,
            )
            .await?;
        }
        insert_event(
            &mut tx,
            &new.id,
            1,
            None,
            SandboxState::Requested,
            "create requested",
            new.now,
        )
        .await?;
        if let Some((key, hash)) = idempotency {
            sqlx::query(
                "INSERT INTO idempotency_keys (project, key, request_hash, sandbox_id, created_at) VALUES (?, ?, ?, ?, ?)",
            )
            .bind(&new.consumer.project)
            .bind(key)
            .bind(hash)
            .bind(&new.id)
            .bind(new.now)
            .execute(&mut *tx)
            .await?;
        }
        let sbx = fetch_in(&mut tx, &new.id).await?;
        self.commit(tx).await?;
        match sbx {
            Some(row) => Ok(Created::New(row.into_api()?)),
            None => Err(StoreError::Corrupt {
                id: new.id,
                what: "inserted row not found".into(),
            }),
        }
    }

    /// The checks of a create that may refuse it, inside its transaction:
    /// an `Idempotency-Key` seen before (the same sandbox, or a conflict),
    /// the project's cap on live sandboxes, and (with `billing.enforce`) the
    /// credits its estimate needs. `None`: go ahead.
    pub(crate) async fn admit(
        &self,
        tx: &mut Transaction<'_, Sqlite>,
        new: &NewSandbox,
        idempotency: Option<(&str, &str)>,
        cap: Option<i64>,
        billing: &Billing,
    ) -> Result<Option<Created>, StoreError> {
        if let Some((key, hash)) = idempotency {
            let seen: Option<(String, String)> = sqlx::query_as(
                "SELECT request_hash, sandbox_id FROM idempotency_keys WHERE project = ? AND key = ?",
            )
            .bind(&new.consumer.project)
            .bind(key)
            .fetch_optional(&mut **tx)
            .await?;
            if let Some((seen_hash, sandbox_id)) = seen {
                if seen_hash != hash {
                    return Ok(Some(Created::KeyConflict));
                }
                return match fetch_in(tx, &sandbox_id).await? {
                    Some(row) => Ok(Some(Created::Replayed(row.into_api()?))),
                    None => Err(StoreError::Corrupt {
                        id: sandbox_id,
                        what: "idempotency key points at a missing sandbox".into(),
                    }),
                };
            }
        }
        if let Some(name) = &new.name {
            // Inside the writer's transaction: no other create runs between
            // this look and the insert (and the partial unique index
            // `sandboxes_live_name` stands behind it).
            let holder = sqlx::query_as::<_, SandboxRow>(&name_holder_query())
                .bind(&new.consumer.project)
                .bind(name)
                .fetch_optional(&mut **tx)
                .await?;
            if let Some(row) = holder {
                return Ok(Some(if new.reuse_by_name {
                    Created::Existing(row.into_api()?)
                } else {
                    Created::NameTaken(row.id)
                }));
            }
        }
        if let Some(cap) = cap {
            let live: i64 = sqlx::query_scalar(&format!(
                "SELECT COUNT(*) FROM sandboxes WHERE project = ? AND state IN {HOLDING}"
            ))
            .bind(&new.consumer.project)
            .fetch_one(&mut **tx)
            .await?;
            if live >= cap {
                return Ok(Some(Created::OverCap { cap }));
            }
        }
        if billing.enforce && new.estimate_credits > 0 {
            if let Err(short) =
                ledger::check_available(tx, &new.consumer.project, new.estimate_credits).await?
            {
                return Ok(Some(Created::InsufficientCredits(short)));
            }
        }
        Ok(None)
    }

    /// One sandbox; with `project`, only if it belongs to that project.
    pub async fn get_sandbox(
        &self,
        id: &str,
        project: Option<&str>,
    ) -> Result<Option<Sandbox>, StoreError> {
        match self.get_row(id, project).await? {
            Some(row) => Ok(Some(row.into_api()?)),
            None => Ok(None),
        }
    }

    /// One sandbox row with its backend state.
    pub async fn get_row(
        &self,
        id: &str,
        project: Option<&str>,
    ) -> Result<Option<SandboxRow>, StoreError> {
        let mut qb = QueryBuilder::<Sqlite>::new(SELECT);
        qb.push(" WHERE id = ").push_bind(id);
        if let Some(p) = project {
            qb.push(" AND project = ").push_bind(p);
        }
        Ok(qb
            .build_query_as::<SandboxRow>()
            .fetch_optional(&self.reader)
            .await?)
    }

    /// A page of sandboxes, newest first.
    pub async fn list_sandboxes(
        &self,
        f: &ListFilter,
    ) -> Result<(Vec<Sandbox>, Option<String>), StoreError> {
        let mut qb = QueryBuilder::<Sqlite>::new(SELECT);
        // Unassigned warm-pool members (and retired ones) are nobody's sandboxes.
        qb.push(" WHERE pool IS NULL");
        push_states(
            &mut qb,
            f.states.iter().map(|s| s.as_str()),
            f.include_all,
            "destroyed",
        );
        for (col, val) in [
            ("profile", &f.profile),
            ("extension", &f.extension),
            ("host", &f.host),
            ("project", &f.project),
            ("name", &f.name),
        ] {
            if let Some(v) = val {
                qb.push(format!(" AND {col} = ")).push_bind(v.clone());
            }
        }
        for (k, v) in &f.labels {
            // `sandbox_labels` mirrors the `labels` column (kept by triggers,
            // migration 0008): an index lookup per pair, no JSON parsing.
            qb.push(" AND id IN (SELECT sandbox_id FROM sandbox_labels WHERE key = ")
                .push_bind(k.clone())
                .push(" AND value = ")
                .push_bind(v.clone())
                .push(")");
        }
        let (rows, next) = self
            .fetch_page(qb, f.cursor.as_deref(), f.limit, |r: &SandboxRow| &r.id)
            .await?;
        let items = rows
            .into_iter()
            .map(SandboxRow::into_api)
            .collect::<Result<_, _>>()?;
        Ok((items, next))
    }

    /// One page of a list, newest first by id: the rows after `cursor` (ids
    /// below it), at most `limit`, and the cursor of the next page when there
    /// is one. `qb` holds the `SELECT ... WHERE ...` so far.
    pub(crate) async fn fetch_page<'q, R>(
        &self,
        mut qb: QueryBuilder<'q, Sqlite>,
        cursor: Option<&str>,
        limit: u32,
        id: impl Fn(&R) -> &str,
    ) -> Result<(Vec<R>, Option<String>), StoreError>
    where
        R: for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow> + Send + Unpin,
    {
        if let Some(c) = cursor {
            qb.push(" AND id < ").push_bind(c.to_owned());
        }
        qb.push(" ORDER BY id DESC LIMIT ")
            .push_bind(i64::from(limit) + 1);
        let mut rows = qb.build_query_as::<R>().fetch_all(&self.reader).await?;
        let next = if rows.len() > limit as usize {
            rows.truncate(limit as usize);
            rows.last().map(|r| id(r).to_owned())
        } else {
            None
        };
        Ok((rows, next))
    }

    /// Move a sandbox from one of `from` to `to`, appending the event in the
    /// same transaction. Refused (nothing written) when the row is elsewhere.
    pub async fn transition(
        &self,
        id: &str,
        from: &[SandboxState],
        to: SandboxState,
        change: Change<'_>,
    ) -> Result<Transition, StoreError> {
        let mut tx = self.writer.begin().await?;
        let Some(row) = fetch_in(&mut tx, id).await? else {
            return Ok(Transition::NotFound);
        };
        let current = row.state()?;
        // Read and write happen in one transaction on the one writer
        // connection, so these checks and the update below cannot interleave
        // with another write (an extend racing an expiry has one outcome).
        let guards_ok = change.generation.is_none_or(|g| g == row.generation)
            && change.expired_by.is_none_or(|t| row.expires_at <= t)
            && change.idle_since.is_none_or(|t| row.last_activity_at <= t);
        let now = now_ms();
        // A pause step of a sandbox past its expiry would bring it back (or
        // push its expiry past its ceiling): it is the reaper's.
        let alive = change.pause.is_none() || row.expires_at > now;
        let budget_ok = match change.budget {
            None => true,
            Some(exhausted) => {
                let (balance, _) = ledger::balance_in(&mut tx, &row.project).await?;
                (balance <= 0) == exhausted
            }
        };
        if !from.contains(&current) || !guards_ok || !alive || !budget_ok {
            tx.rollback().await?;
            return Ok(Transition::Refused(row.into_api()?));
        }
        if let (Some(escrow), Some(_)) = (change.escrow, change.new_generation) {
            // The old generation's use ends here; it is charged and its
            // reservation released before the new lifetime reserves its own.
            ledger::settle_in(&mut tx, &row, now, escrow.enforce, now).await?;
        }
        let mut generation = row.generation;
        let mut qb = QueryBuilder::<Sqlite>::new("UPDATE sandboxes SET state = ");
        qb.push_bind(to.as_str())
            .push(", updated_at = ")
            .push_bind(now);
        if change.set_ready_at {
            qb.push(", ready_at = ").push_bind(now);
        }
        if change.set_destroyed_at {
            qb.push(", destroyed_at = ").push_bind(now);
        }
        if !matches!(
            to,
            SandboxState::Requested
                | SandboxState::Provisioning
                | SandboxState::Ready
                | SandboxState::Active
                | SandboxState::Paused
        ) {
            // Billing stops when the sandbox stops being usable.
            qb.push(", ended_at = COALESCE(ended_at, ")
                .push_bind(now)
                .push(")");
        }
        let mut rebalance_after = false;
        match change.pause {
            Some(PauseStep::Pause) => {
                qb.push(", paused_at = ")
                    .push_bind(now)
                    .push(", pause_reason = ")
                    .push_bind(change.pause_reason.unwrap_or("user"));
                if let Some(longest) = change.pause_clock.filter(|_| row.ttl_left_ms.is_none()) {
                    // The clock stops: the TTL left is kept, and the pause
                    // itself may last `longest` (then it expires paused).
                    let reserve = crate::ledger::credits_for(
                        row.paused_rate_centicredits,
                        crate::ledger::billed_seconds(longest),
                    );
                    // The ceiling moves by the longest pause (and back by
                    // what it did not last, at resume).
                    qb.push(", ttl_left_ms = ")
                        .push_bind((row.expires_at - now).max(0))
                        .push(", expires_at = ")
                        .push_bind(now.saturating_add(longest))
                        .push(", max_expires_at = max_expires_at + ")
                        .push_bind(longest)
                        .push(", pause_reserve_credits = ")
                        .push_bind(reserve)
                        .push(", estimate_credits = estimate_credits + ")
                        .push_bind(reserve);
                    rebalance_after = reserve > 0;
                }
            }
            Some(PauseStep::Resume) => {
                let paused_at = row.paused_at.unwrap_or(now);
                // Never past its expiry: time after it is billed as nothing anyway.
                let paused = (now.min(row.expires_at) - paused_at).max(0);
                qb.push(", paused_ms = paused_ms + ")
                    .push_bind(paused)
                    .push(", paused_at = NULL, pause_reason = NULL, last_activity_at = ")
                    .push_bind(now);
                if let Some(left) = row.ttl_left_ms {
                    // The clock starts again where it stopped; the ceiling
                    // moves by the pause, and the estimate keeps what the
                    // pause cost instead of what its longest could have.
                    let cost = crate::ledger::credits_for(
                        row.paused_rate_centicredits,
                        crate::ledger::billed_seconds(paused),
                    );
                    // No extend is taken while the clock is stopped, so
                    // `expires_at` is still the end of the longest pause.
                    let longest = (row.expires_at - paused_at).max(0);
                    let ceiling = row.max_expires_at + paused - longest;
                    qb.push(", expires_at = ")
                        .push_bind(now.saturating_add(left).min(ceiling))
                        .push(", max_expires_at = ")
                        .push_bind(ceiling)
                        .push(", ttl_left_ms = NULL, pause_reserve_credits = 0")
                        .push(", estimate_credits = estimate_credits - ")
                        .push_bind(row.pause_reserve_credits)
                        .push(" + ")
                        .push_bind(cost);
                    rebalance_after = row.pause_reserve_credits != cost;
                }
            }
            None => {}
        }
        if let Some(r) = &change.reachability {
            qb.push(", reachability = ")
                .push_bind(r.as_ref().map(|v| v.to_string()));
        }
        if let Some(b) = &change.backend_state {
            qb.push(", backend_state = ")
                .push_bind(b.as_ref().map(|v| v.to_string()));
        }
        if let Some(f) = &change.failure {
            qb.push(", failure_code = ")
                .push_bind(f.as_ref().map(|f| f.code.clone()))
                .push(", failure_message = ")
                .push_bind(f.as_ref().map(|f| f.message.clone()));
        }
        if let Some(life) = change.new_generation {
            generation += 1;
            qb.push(", generation = ")
                .push_bind(generation)
                .push(", created_at = ")
                .push_bind(now)
                .push(", expires_at = ")
                .push_bind(life.expires_at)
                .push(", max_expires_at = ")
                .push_bind(life.max_expires_at)
                .push(", last_activity_at = ")
                .push_bind(now)
                .push(", ready_at = NULL, destroyed_at = NULL, ended_at = NULL, settled_at = NULL, paused_at = NULL, paused_ms = 0")
                .push(", pause_reason = NULL, ttl_left_ms = NULL, pause_reserve_credits = 0");
            if change.escrow.is_some() {
                let ttl_ms = life.expires_at.saturating_sub(now);
                qb.push(", estimate_credits = ")
                    .push_bind(crate::ledger::credits_for(
                        row.rate_centicredits,
                        crate::ledger::billed_seconds(ttl_ms),
                    ));
            }
        }
        let mut decided = None;
        if let Some((why, detail)) = change.termination {
            if row.termination_reason.is_none() {
                decided = Some(why);
                qb.push(", termination_reason = ")
                    .push_bind(why.as_str())
                    .push(", termination_at = ")
                    .push_bind(now)
                    .push(", termination_detail = ")
                    .push_bind(detail);
            }
        } else if change.new_generation.is_some() {
            qb.push(
                ", termination_reason = NULL, termination_at = NULL, termination_detail = NULL",
            );
        }
        if let Some(retry) = change.teardown_retry {
            let (at, attempts) = match retry {
                Some((at, attempts)) => (Some(at), attempts),
                None => (None, 0),
            };
            qb.push(", next_teardown_at = ")
                .push_bind(at)
                .push(", teardown_attempts = ")
                .push_bind(attempts);
        }
        qb.push(" WHERE id = ").push_bind(id);
        qb.build().execute(&mut *tx).await?;
        if let Some(escrow) = change
            .escrow
            .filter(|_| change.new_generation.is_some() || rebalance_after)
        {
            if let Some(after) = fetch_in(&mut tx, id).await? {
                if let Err(short) = ledger::rebalance(&mut tx, &after, escrow.enforce, now).await? {
                    tx.rollback().await?;
                    return Ok(Transition::InsufficientCredits(short));
                }
            }
        }
        insert_event_ending(
            &mut tx,
            id,
            generation,
            Some(current),
            to,
            change.reason,
            now,
            decided,
        )
        .await?;
        let sbx = fetch_in(&mut tx, id).await?;
        self.commit(tx).await?;
        match sbx {
            Some(row) => Ok(Transition::Done {
                from: current,
                sandbox: row.into_api()?,
            }),
            None => Ok(Transition::NotFound),
        }
    }

    /// Record the backend's handle without a state change (written before the
    /// sandbox is reported ready, so a restart can always find it).
    pub async fn set_backend_state(
        &self,
        id: &str,
        generation: u32,
        state: &serde_json::Value,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE sandboxes SET backend_state = ?, updated_at = ? WHERE id = ? AND generation = ?")
            .bind(state.to_string())
            .bind(now_ms())
            .bind(id)
            .bind(generation)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// Move `expires_at` forward by `by_ms`, never past `max_expires_at`, in
    /// one conditional statement. `None` when the sandbox is not extendable.
    /// Nothing is reserved (see [`Db::extend_ttl_billed`]).
    pub async fn extend_ttl(
        &self,
        id: &str,
        project: Option<&str>,
        by_ms: i64,
    ) -> Result<Option<(Sandbox, bool)>, StoreError> {
        match self.extend_ttl_billed(id, project, by_ms, false).await? {
            Extended::Done(sbx, capped) => Ok(Some((*sbx, capped))),
            Extended::NotExtendable | Extended::InsufficientCredits(_) => Ok(None),
        }
    }

    /// Live (`ready`/`active`/`paused`) sandboxes handed to a consumer (no
    /// warm-pool spares) as `(id, extension, backend_state, generation)`,
    /// for the exit watcher.
    pub async fn watched(&self) -> Result<Vec<(String, String, Option<String>, u32)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT id, extension, backend_state, generation FROM sandboxes \
             WHERE state IN ('ready','active','paused') AND pool IS NULL",
        )
        .fetch_all(&self.reader)
        .await?)
    }

    /// Record `reason` in sandbox `id`'s events without changing its state
    /// (from and to are its state now). False when it is not live.
    pub async fn note(&self, id: &str, reason: &str) -> Result<bool, StoreError> {
        let mut tx = self.writer.begin().await?;
        let Some(row) = fetch_in(&mut tx, id).await? else {
            return Ok(false);
        };
        let st = row.state()?;
        if !matches!(st, SandboxState::Ready | SandboxState::Active) {
            tx.rollback().await?;
            return Ok(false);
        }
        insert_event(&mut tx, id, row.generation, Some(st), st, reason, now_ms()).await?;
        self.commit(tx).await?;
        Ok(true)
    }

    /// The live sandbox of `project` named `name`, if any.
    pub async fn live_name_holder(
        &self,
        project: &str,
        name: &str,
    ) -> Result<Option<SandboxRow>, StoreError> {
        Ok(sqlx::query_as::<_, SandboxRow>(&name_holder_query())
            .bind(project)
            .bind(name)
            .fetch_optional(&self.reader)
            .await?)
    }

    /// Records sandbox `id`'s exit snapshot (`snapshot`, when one was
    /// started) with `reason` in its events, without changing its state.
    /// Only for a sandbox on its way out that has none yet: false otherwise.
    pub async fn record_exit_snapshot(
        &self,
        id: &str,
        snapshot: Option<&str>,
        reason: &str,
    ) -> Result<bool, StoreError> {
        let mut tx = self.writer.begin().await?;
        let Some(row) = fetch_in(&mut tx, id).await? else {
            return Ok(false);
        };
        let st = row.state()?;
        if !matches!(st, SandboxState::Expired | SandboxState::Destroying)
            || row.exit_snapshot.is_some()
        {
            tx.rollback().await?;
            return Ok(false);
        }
        if let Some(snap) = snapshot {
            sqlx::query("UPDATE sandboxes SET exit_snapshot = ? WHERE id = ?")
                .bind(snap)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        insert_event(&mut tx, id, row.generation, Some(st), st, reason, now_ms()).await?;
        self.commit(tx).await?;
        Ok(true)
    }

    /// Mark activity; `ready` becomes `active` (with an event).
    pub async fn touch(&self, id: &str) -> Result<Transition, StoreError> {
        let now = now_ms();
        sqlx::query("UPDATE sandboxes SET last_activity_at = ? WHERE id = ? AND state IN ('ready','active')")
            .bind(now)
            .bind(id)
            .execute(&self.writer)
            .await?;
        match self
            .transition(
                id,
                &[SandboxState::Ready],
                SandboxState::Active,
                Change {
                    reason: "touched",
                    ..Change::default()
                },
            )
            .await?
        {
            Transition::Refused(sbx) if sbx.state == SandboxState::Active => Ok(Transition::Done {
                from: SandboxState::Active,
                sandbox: sbx,
            }),
            other => Ok(other),
        }
    }

    /// Events of one sandbox, oldest first, after the sequence `after`.
    pub async fn events(
        &self,
        id: &str,
        after: i64,
        limit: u32,
    ) -> Result<(Vec<Event>, Option<String>), StoreError> {
        self.events_from(id, after, limit, 0).await
    }

    /// [`Db::events`] of generation `min_generation` and later: 1 leaves out
    /// what happened while the sandbox waited unassigned in a warm pool
    /// (generation 0), which is not its consumer's history.
    pub async fn events_from(
        &self,
        id: &str,
        after: i64,
        limit: u32,
        min_generation: u32,
    ) -> Result<(Vec<Event>, Option<String>), StoreError> {
        let rows: Vec<EventRow> = sqlx::query_as(
            "SELECT seq, id, sandbox_id, generation, from_state, to_state, reason, at, termination FROM events \
             WHERE sandbox_id = ? AND seq > ? AND generation >= ? ORDER BY seq LIMIT ?",
        )
        .bind(id)
        .bind(after)
        .bind(min_generation)
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.reader)
        .await?;
        let more = rows.len() > limit as usize;
        let mut items = Vec::with_capacity(rows.len());
        let mut last = None;
        for row in rows.into_iter().take(limit as usize) {
            last = Some(row.seq);
            items.push(row.into_api()?);
        }
        Ok((
            items,
            if more {
                last.map(|s| s.to_string())
            } else {
                None
            },
        ))
    }

    /// Sandboxes by state, for `/metrics`; warm-pool members (unassigned
    /// or retired unassigned) are counted apart ([`Db::pool_counts`]).
    pub async fn count_by_state(&self) -> Result<Vec<(String, i64)>, StoreError> {
        // Two covering index scans: all rows by state, minus pool rows by
        // state (a small partial index), cheaper than filtering every row.
        let mut all: Vec<(String, i64)> =
            sqlx::query_as("SELECT state, COUNT(*) FROM sandboxes GROUP BY state")
                .fetch_all(&self.reader)
                .await?;
        let pooled: Vec<(String, i64)> = sqlx::query_as(
            "SELECT state, COUNT(*) FROM sandboxes WHERE pool IS NOT NULL GROUP BY state",
        )
        .fetch_all(&self.reader)
        .await?;
        for (state, n) in pooled {
            if let Some(row) = all.iter_mut().find(|(s, _)| *s == state) {
                row.1 -= n;
            }
        }
        Ok(all)
    }

    /// Rows that are not settled, for the start-up pass.
    pub async fn unsettled(&self) -> Result<Vec<SandboxRow>, StoreError> {
        Ok(sqlx::query_as::<_, SandboxRow>(&format!(
            "{SELECT} WHERE state NOT IN ('destroyed','failed')"
        ))
        .fetch_all(&self.reader)
        .await?)
    }
}

/// The live sandbox of a project (`?`) with a name (`?`).
fn name_holder_query() -> String {
    format!("{SELECT} WHERE project = ? AND name = ? AND state IN {HOLDING}")
}

pub(super) async fn fetch_in(
    tx: &mut Transaction<'_, Sqlite>,
    id: &str,
) -> Result<Option<SandboxRow>, sqlx::Error> {
    sqlx::query_as::<_, SandboxRow>(&format!("{SELECT} WHERE id = ?"))
        .bind(id)
        .fetch_optional(&mut **tx)
        .await
}

/// `AND state IN (states)`; with no states, `AND state <> hidden` unless
/// `include_all` (the default list leaves out what is gone).
pub(crate) fn push_states<'q>(
    qb: &mut QueryBuilder<'q, Sqlite>,
    states: impl ExactSizeIterator<Item = &'static str>,
    include_all: bool,
    hidden: &'static str,
) {
    if states.len() > 0 {
        qb.push(" AND state IN (");
        let mut sep = qb.separated(", ");
        for s in states {
            sep.push_bind(s);
        }
        qb.push(")");
    } else if !include_all {
        qb.push(format!(" AND state <> '{hidden}'"));
    }
}

pub(super) async fn insert_event(
    tx: &mut Transaction<'_, Sqlite>,
    sandbox_id: &str,
    generation: u32,
    from: Option<SandboxState>,
    to: SandboxState,
    reason: &str,
    at: i64,
) -> Result<(), sqlx::Error> {
    insert_event_ending(tx, sandbox_id, generation, from, to, reason, at, None).await
}

/// [`insert_event`] for the event that decides a sandbox's end.
#[allow(clippy::too_many_arguments)]
pub(super) async fn insert_event_ending(
    tx: &mut Transaction<'_, Sqlite>,
    sandbox_id: &str,
    generation: u32,
    from: Option<SandboxState>,
    to: SandboxState,
    reason: &str,
    at: i64,
    termination: Option<TerminationReason>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO events (id, sandbox_id, generation, from_state, to_state, reason, at, termination) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(new_id("evt"))
    .bind(sandbox_id)
    .bind(generation)
    .bind(from.map(|s| s.as_str()))
    .bind(to.as_str())
    .bind(reason)
    .bind(at)
    .bind(termination.map(|t| t.as_str()))
    .execute(&mut **tx)
    .await?;
    Ok(())
}
