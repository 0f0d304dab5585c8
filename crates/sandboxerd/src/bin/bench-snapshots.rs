//! `bench-snapshots`: capture and restore time of `ext.local` snapshots.
//!
//! Builds a workspace of `--files` files totalling `--mib` MiB (in folders of
//! 100, incompressible bytes: the worst case for zstd) under a scratch data
//! dir, then times, `--runs` times each, what the daemon does for
//! `POST /v1/sandboxes/{id}/snapshots` (archive + zstd + SHA-256 + fsync +
//! naming the blob) and `POST /v1/sandboxes/{id}/restore` (verify + extract
//! beside + swap into the workspace). No bubblewrap is needed: both work on
//! the workspace directory. Prints one markdown table row with the medians.
//!
//! `cargo run --release -p sandboxerd --bin bench-snapshots -- --header`
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Parser;
use sandboxerd::blobs::Blobs;
use sandboxerd::extensions::local::LocalExtension;
use sandboxerd::extensions::{Extension, SnapshotSource};

/// Time snapshot capture and restore of a generated workspace.
#[derive(Parser, Debug)]
#[command(name = "bench-snapshots")]
struct Args {
    /// Number of files in the workspace.
    #[arg(long, default_value_t = 10_000)]
    files: usize,
    /// Total size of the files, in MiB.
    #[arg(long, default_value_t = 100)]
    mib: u64,
    /// Timed runs of each operation (the median is reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Scratch folder (a fresh one under the system temp dir by default).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Print the table header before the row.
    #[arg(long)]
    header: bool,
    /// Also time the parts of a restore (extract, remove a tree) on stderr.
    #[arg(long)]
    breakdown: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.files > 0 && args.runs > 0,
        "--files and --runs must be at least 1"
    );
    let scratch = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            tempfile_dir(d)?
        }
        None => tempfile_dir(&std::env::temp_dir())?,
    };
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(&args, &scratch));
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

/// A fresh folder under `parent`, removed by `main` when done.
fn tempfile_dir(parent: &Path) -> anyhow::Result<PathBuf> {
    let dir = parent.join(format!("bench-snapshots-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

async fn run(args: &Args, data_dir: &Path) -> anyhow::Result<()> {
    let sandbox_id = "sbx_BENCH";
    let workspace = data_dir
        .join("sandboxes")
        .join(sandbox_id)
        .join("workspace");
    let total = args.mib << 20;
    write_workspace(&workspace, args.files, total)?;

    let ext = LocalExtension::new(data_dir, Default::default());
    let blobs = Blobs::new(data_dir);
    blobs.prepare()?;

    let mut captures = Vec::new();
    let mut last = None;
    for i in 0..args.runs {
        let tmp = blobs.tmp_path(&format!("snap_bench{i}"));
        let started = Instant::now();
        let archive = ext
            .snapshot(
                sandbox_id,
                None,
                &tmp,
                u64::MAX,
                &tokio_util::sync::CancellationToken::new(),
            )
            .await
            .map_err(|e| anyhow::anyhow!("capture: {e}"))?;
        let path = blobs.commit(&tmp, &archive.sha256, archive.size_bytes)?;
        captures.push(started.elapsed());
        if let Some((prev_sha, _, _)) = &last {
            anyhow::ensure!(
                prev_sha == &archive.sha256,
                "two captures of one tree differ"
            );
        }
        last = Some((archive.sha256.clone(), archive, path));
    }
    let Some((sha, archive, path)) = last else {
        anyhow::bail!("no run");
    };
    let src = SnapshotSource {
        id: "snap_bench".into(),
        path,
        sha256: sha,
    };
    let mut restores = Vec::new();
    for _ in 0..args.runs {
        // Something to undo, so every run swaps a real tree.
        std::fs::write(workspace.join("added-by-bench"), b"x")?;
        let started = Instant::now();
        let env = std::collections::BTreeMap::new();
        let secrets = std::collections::BTreeMap::new();
        let env = sandboxerd::extensions::SandboxEnv {
            env: &env,
            secrets: &secrets,
        };
        ext.restore(sandbox_id, None, &src, env)
            .await
            .map_err(|e| anyhow::anyhow!("restore: {e}"))?;
        restores.push(started.elapsed());
        anyhow::ensure!(
            !workspace.join("added-by-bench").exists(),
            "restore left an added file"
        );
    }

    if args.breakdown {
        let scratch = data_dir.join("breakdown");
        let started = Instant::now();
        let root = sandboxerd::extensions::archive::extract_archive(
            &src.path,
            &src.sha256,
            &scratch,
            None,
        )
        .map_err(|e| anyhow::anyhow!("extract: {e}"))?;
        let extract = started.elapsed();
        sandboxerd::extensions::archive::apply_root_meta(&scratch, root)?;
        let started = Instant::now();
        let hashed = sandboxerd::extensions::archive::sha256_file(&src.path)?;
        let hash = started.elapsed();
        anyhow::ensure!(hashed == src.sha256, "hash mismatch");
        // The swap of a restore, step by step: old entries out, new in, old removed.
        let old = data_dir.join("breakdown-old");
        std::fs::create_dir(&old)?;
        let started = Instant::now();
        move_entries(&workspace, &old)?;
        move_entries(&scratch, &workspace)?;
        let swap = started.elapsed();
        // What a restore's fsync of the sandbox dir costs right after the
        // extraction: on ext4 (data=ordered) the journal commit writes the
        // freshly extracted file data out first.
        let started = Instant::now();
        std::fs::File::open(data_dir)?.sync_all()?;
        let sync = started.elapsed();
        let started = Instant::now();
        std::fs::remove_dir_all(&old)?;
        let remove = started.elapsed();
        std::fs::remove_dir_all(&scratch)?;
        eprintln!(
            "breakdown: extract+verify {:.0} ms (hash alone {:.0} ms), swap {:.0} ms, fsync of the dir {:.0} ms, remove the old tree {:.0} ms",
            extract.as_secs_f64() * 1e3,
            hash.as_secs_f64() * 1e3,
            swap.as_secs_f64() * 1e3,
            sync.as_secs_f64() * 1e3,
            remove.as_secs_f64() * 1e3
        );
    }

    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    let capture = median(&mut captures);
    let restore = median(&mut restores);
    if args.header {
        println!(
            "| date | nproc | files | workspace MiB | archive MiB | capture (median of {}) | restore (median of {}) | capture MiB/s | restore MiB/s |",
            args.runs, args.runs
        );
        println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    }
    println!(
        "| {} | {} | {} | {:.0} | {:.1} | {:.0} ms | {:.0} ms | {:.0} | {:.0} |",
        chrono::Utc::now().format("%Y-%m-%d"),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        args.files,
        mib(total),
        mib(archive.size_bytes),
        capture.as_secs_f64() * 1e3,
        restore.as_secs_f64() * 1e3,
        mib(total) / capture.as_secs_f64(),
        mib(total) / restore.as_secs_f64(),
    );
    Ok(())
}

fn move_entries(from: &Path, to: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        std::fs::rename(entry.path(), to.join(entry.file_name()))?;
    }
    Ok(())
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// `files` files of incompressible bytes adding up to `total`, 100 per folder.
fn write_workspace(workspace: &Path, files: usize, total: u64) -> anyhow::Result<()> {
    std::fs::create_dir_all(workspace)?;
    let each = total / files as u64;
    let mut extra = total % files as u64;
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut buf = Vec::new();
    for i in 0..files {
        let dir = workspace.join(format!("d{:03}", i / 100));
        if i % 100 == 0 {
            std::fs::create_dir_all(&dir)?;
        }
        let len = each + u64::from(extra > 0);
        extra = extra.saturating_sub(1);
        buf.clear();
        while (buf.len() as u64) < len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            buf.extend_from_slice(&x.to_le_bytes());
        }
        buf.truncate(usize::try_from(len)?);
        std::fs::write(dir.join(format!("f{i:05}.bin")), &buf)?;
    }
    Ok(())
}
