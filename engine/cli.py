"""The `omnibridge` command line."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from .settings import get_settings

app = typer.Typer(help="OmniBridge Search: align, evaluate and search image and text collections.",
                  no_args_is_help=True, pretty_exceptions_enable=False)

@app.callback()
def _startup() -> None:
    """Check the configuration before any work; keep transformers' progress bars out of --json output."""
    from transformers.utils import logging as hf_logging

    from .settings import SettingsError

    try:
        get_settings()
    except SettingsError as e:
        _fail(str(e))
    hf_logging.disable_progress_bar()


ModelOpt = Annotated[Optional[str], typer.Option("--model", help="'default', 'bridge', clip:MODEL, siglip:MODEL or a checkpoint folder [env OMNIBRIDGE_MODEL]")]


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _load(model: str | None):
    from omnibridge import load_model

    s = get_settings()
    try:
        return load_model(model or s.model, device=s.device)
    except ValueError as e:
        _fail(str(e))


@app.command()
def params(
    config: Annotated[str, typer.Option("--config", help="named configuration ('official', ...) or a JSON file")] = "official",
    tsv: Annotated[bool, typer.Option("--tsv", help="print name<TAB>shape rows")] = False,
) -> None:
    """List the aligner's parameters under their checkpoint names (built on the meta device: no memory)."""
    from omnibridge.checkpoint import meta_aligner, param_table

    try:
        aligner = meta_aligner(config)
    except ValueError as e:
        _fail(str(e))
    rows = param_table(aligner)
    if tsv:
        sys.stdout.write("".join(f"{n}\t{s}\n" for n, s in rows))
    else:
        total = sum(p.numel() for p in aligner.parameters())
        typer.echo(f"{config}: {len(rows)} tensors, {total:,} parameters (use --tsv for the list)")


@app.command()
def align(
    pairs: Annotated[Path, typer.Argument(help="PAIRS.jsonl: {\"image\", \"caption\", \"id\"} per line")],
    out: Annotated[Path, typer.Option("--out", help="checkpoint folder to write")],
    epochs: Annotated[int, typer.Option(min=1)] = 40,
    batch_size: Annotated[int, typer.Option("--batch-size", min=2)] = 64,
    lr: Annotated[float, typer.Option(min=0)] = 3e-4,
    views: Annotated[int, typer.Option(help="cached views per image (1 = no augmentation)", min=1)] = 4,
    seed: int = 0,
    resume: Annotated[bool, typer.Option("--resume", help="continue an interrupted run in --out")] = False,
    skip_bad: Annotated[bool, typer.Option("--skip-bad", help="skip malformed lines and unreadable images")] = False,
    config: Annotated[str, typer.Option("--config", help="aligner configuration for a new model")] = "bundled-small",
    backbone: Annotated[str, typer.Option(help="'bundled', 'clip:MODEL' or 'qwen2-vl:MODEL[@LORA]'")] = "bundled",
) -> None:
    """Latent-space alignment of the aligner on your captioned images (backbone frozen)."""
    from omnibridge import create_model
    from omnibridge.backbones import build_backbone, parse_backbone
    from omnibridge.data import PairsError, read_pairs
    from omnibridge.train import AlignConfig, align as run_align

    try:
        data = read_pairs(pairs, skip_bad=skip_bad)
    except PairsError as e:
        _fail(str(e))
    if data.skipped:
        typer.secho(f"skipped {len(data.skipped)} bad lines:", fg=typer.colors.YELLOW, err=True)
        for line in data.skipped[:20]:
            typer.echo(f"  {line}", err=True)
    if out.exists() and not out.is_dir():
        _fail(f"--out {out} is a file; give a folder for the checkpoint")
    if out.exists() and any(out.iterdir()) and not resume:
        _fail(f"{out} already holds files; pass --resume to continue that run or choose another --out")
    try:
        model = create_model(config, build_backbone(parse_backbone(backbone), device=get_settings().device), seed=seed)
        cfg = AlignConfig(epochs=epochs, batch_size=batch_size, lr=lr, views=views, seed=seed)
        typer.echo(f"aligning on {len(data.captions)} captions of {len(data.images)} images, device {model.device}")
        run_align(model, data, out, cfg, resume=resume)
    except ValueError as e:
        _fail(str(e))
    typer.echo(f"checkpoint written to {out}; use it with --model {out} or OMNIBRIDGE_MODEL={out}")


@app.command("eval")
def eval_(
    pairs: Annotated[Path, typer.Argument(help="PAIRS.jsonl to evaluate on")],
    model: ModelOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the metrics as JSON")] = False,
    skip_bad: Annotated[bool, typer.Option("--skip-bad")] = False,
) -> None:
    """Text->image and image->text recall@1/5/10 with multi-positive ranks."""
    from omnibridge.data import PairsError, read_pairs
    from omnibridge.evaluate import evaluate

    try:
        data = read_pairs(pairs, skip_bad=skip_bad)
    except PairsError as e:
        _fail(str(e))
    metrics = evaluate(_load(model), data)
    if data.skipped:
        metrics["skipped"] = len(data.skipped)
    if as_json:
        typer.echo(json.dumps(metrics))
        return
    for direction in ("t2i", "i2t"):
        m = metrics[direction]
        typer.echo(f"{direction}: R@1 {m['r1']:.3f}  R@5 {m['r5']:.3f}  R@10 {m['r10']:.3f}")
    typer.echo(f"{metrics['queries']} caption queries, {metrics['images']} images")


@app.command()
def demo(
    model: ModelOpt = None,
    query: Annotated[Optional[list[str]], typer.Option("--query", "-q", help="a text query (repeatable)")] = None,
    no_serve: Annotated[bool, typer.Option("--no-serve", help="only index and search the sample; start no servers")] = False,
) -> None:
    """Index the bundled sample of real photos (scikit-image), search it, then run the UI and the API until Ctrl-C."""
    from omnibridge.data import read_pairs
    from omnibridge.evaluate import evaluate

    from .engine import Engine
    from .samples import write_photo_sample
    from .services import get_services

    settings = get_settings()
    if model:
        settings = settings.model_copy(update={"model": model})
    if not no_serve:  # before the work: a busy port should not cost the wait
        from .launch import LaunchError, check_port_free

        try:
            check_port_free(settings.api_host, settings.api_port, "OMNIBRIDGE_API_PORT")
            check_port_free(settings.api_host, settings.ui_port, "OMNIBRIDGE_UI_PORT")
        except LaunchError as e:
            _fail(str(e))
    pairs_file = write_photo_sample(settings.home / "samples" / "photos")
    svc = get_services(settings)
    try:
        svc.model
    except ValueError as e:
        _fail(str(e))
    job = _run_ingest(svc, [str(pairs_file)], "samples")
    typer.echo(f"collection 'samples': {job['indexed']} photos indexed, {job['skipped']} unchanged, "
               f"{job['failed']} failed (scikit-image, in {pairs_file.parent}; data in {settings.home})")
    metrics = evaluate(svc.model, read_pairs(pairs_file))
    typer.echo(f"text->image on its {metrics['queries']} captions: R@1 {metrics['t2i']['r1']:.2f}  "
               f"R@5 {metrics['t2i']['r5']:.2f}")
    for q in query or ["a cat", "a cup of coffee", "coins", "a rocket launch", "a giraffe"]:
        hits = Engine(svc).search(text=q, collection="samples", k=3)["hits"]
        typer.echo(f"{q!r:>34} -> " + (", ".join(f"{Path(h['path']).name} ({h['score']:.2f})" for h in hits)
                                        or "no good match"))
    typer.echo("search it yourself: omnibridge search \"a red flower\" --collection samples")
    if not no_serve:
        _serve_demo(svc)


def _serve_demo(svc) -> None:
    """Start the API and the UI on the embedded stores, print their URLs and an API key, run until Ctrl-C."""
    from .api.auth import create_api_key, revoke_api_key
    from .launch import LaunchError, Launcher

    revoke_api_key(svc, "demo")  # one live demo key: the one printed below
    key = create_api_key(svc, "demo", {"*": "write"})
    svc.close()  # hand the embedded vector store over to the API and UI processes
    launcher = Launcher(svc.settings)
    # the UI goes through the demo's API (one engine, answer-ready before the URLs print, as in production); its
    # folder ingest reads the user's home unless OMNIBRIDGE_LIBRARY_ROOTS says otherwise (the data dir never)
    roots = os.pathsep.join(map(str, svc.settings.library_roots)) or str(Path.home())
    launcher.env.update({"OMNIBRIDGE_API_URL": launcher.urls["api"], "OMNIBRIDGE_API_KEY": key,
                         "OMNIBRIDGE_LIBRARY_ROOTS": roots})
    typer.echo("starting the API and the UI (logs in " + str(svc.settings.home / "logs") + ") ...")
    try:
        launcher.start()
    except LaunchError as e:
        _fail(str(e))
    urls = launcher.urls
    typer.secho("\nOmniBridge Search is running on the collection 'samples' (Ctrl-C stops it):", bold=True)
    typer.echo(f"  UI   {urls['ui']}  (through the API; folders it may index: {roots})")
    typer.echo(f"  API  {urls['api']}  (OpenAPI docs at {urls['api']}/docs)")
    typer.echo(f"       key with write access to every collection: {key}")
    typer.echo(f"       curl -H 'X-API-Key: {key}' -H 'Content-Type: application/json' "
               f"-d '{{\"text\": \"a cat\"}}' {urls['api']}/search")
    try:
        reason = launcher.wait()
    finally:
        launcher.stop()
    typer.echo(f"{reason}; the API and the UI are stopped")


# -- ingestion and search ---------------------------------------------------------------------------------------

def _services():
    from .services import get_services

    return get_services()  # settings were checked at start-up


@app.command()
def ingest(
    paths: Annotated[list[str], typer.Argument(help="folders (recursive), image or text files, or PAIRS.jsonl files", show_default=False)],
    collection: Annotated[str, typer.Option("--collection", "-c", help="collection to add to (created if new)")] = "default",
    ocr: Annotated[bool, typer.Option("--ocr", help="read text in images with tesseract and make it searchable")] = False,
    workers: Annotated[int, typer.Option("--workers", min=1, max=64, help="parallel batches in the embedded worker")] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
) -> None:
    """Index a media library: new files are embedded, unchanged ones skipped, deleted ones removed."""
    import shutil

    from ingest import pipeline

    svc = _services()
    if ocr and not shutil.which("tesseract"):
        _fail("--ocr needs Debian's tesseract: apt-get install tesseract-ocr (or leave out --ocr)")
    if not collection.strip() or len(collection) > 100:
        _fail(f"--collection {collection!r}: give a name of 1 to 100 characters")
    try:
        pipeline.read_source(paths)
    except pipeline.SourceError as e:
        _fail(str(e))
    job = _run_ingest(svc, paths, collection, ocr=ocr, workers=workers, quiet=as_json)
    _print_summary(job, as_json)
    if job["status"] == "failed":
        raise typer.Exit(1)


def _run_ingest(svc, paths: list[str], collection: str, ocr: bool = False, workers: int = 1,
                quiet: bool = False) -> dict:
    """Submit a job and follow it with a progress bar; embedded default: run the worker in this process."""
    import time
    from contextlib import nullcontext

    from tqdm import tqdm

    from ingest import pipeline, worker

    embedded = svc.settings.embedded_broker
    if not embedded and workers > 1:
        typer.echo(f"note: --workers applies to the embedded worker; with {svc.settings.broker_url} scale with "
                   "`omnibridge worker --concurrency N` or more worker processes", err=True)
    job_id = None
    try:
        with worker.in_process_worker(workers) if embedded else nullcontext():
            if embedded:
                worker.recover()  # finish what an interrupted `omnibridge ingest` left
            job_id = worker.submit(paths, collection, ocr=ocr)
            beat = pipeline.Heartbeat(svc, interval=svc.settings.job_stale_seconds / 4)
            if embedded:  # this process runs the job: no other process takes it over while it waits its turn
                beat.hold(job_id)
            bar = tqdm(total=None, unit="file", desc=f"job {job_id}", disable=quiet, dynamic_ncols=True)
            started, warned = time.monotonic(), False
            while True:
                job = pipeline.job_summary(svc, job_id)
                if job["status"] in ("running", "finalizing", "done") and bar.total is None:
                    bar.reset(total=job["queued"])
                bar.n = job["done"]
                bar.set_postfix(status=job["status"], refresh=False)
                bar.refresh()
                if job["status"] in ("done", "failed"):
                    break
                if not embedded and not warned and job["status"] == "queued" and time.monotonic() - started > 15:
                    bar.write("no worker has picked the job up yet: start one with `omnibridge worker` "
                              f"(broker {svc.settings.broker_url})")
                    warned = True
                time.sleep(0.3)
            bar.close()
            beat.close()
    except KeyboardInterrupt:
        where = "the next `omnibridge ingest` finishes it" if embedded else "the workers carry on with it"
        _fail(f"interrupted; job {job_id} keeps what is done and {where}" if job_id else "interrupted")
    return pipeline.job_summary(svc, job_id, errors=50)


def _print_summary(job: dict, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(job))
        return
    typer.echo(f"job {job['id']} ({job['collection']}): {job['status']}  {job['seconds']:.1f} s")
    if job.get("error"):
        typer.secho(f"  error: {job['error']}", fg=typer.colors.RED)
    typer.echo(f"  indexed {job['indexed']}, duplicates {job['duplicates']}, unchanged {job['skipped']}, "
               f"failed {job['failed']}, removed {job['removed']}  (of {job['seen']} files seen)")
    for err in job.get("errors", []):
        typer.secho(f"  failed: {err['path']}: {err['error']}", fg=typer.colors.YELLOW)


@app.command()
def status(
    collection: Annotated[Optional[str], typer.Option("--collection", "-c", help="only this collection")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    jobs: Annotated[int, typer.Option("--jobs", min=1, help="how many recent jobs to show")] = 10,
) -> None:
    """Collections with their asset counts, recent jobs, and the errors of failed files."""
    from ingest import pipeline

    svc = _services()
    report = pipeline.status_report(svc, collection, jobs=jobs)
    if collection and not report["collections"]:
        _fail(f"no collection named {collection!r}; known: {', '.join(report['known']) or 'none yet (run omnibridge ingest)'}")
    if as_json:
        typer.echo(json.dumps(report))
        return
    if not report["collections"]:
        typer.echo("nothing indexed yet: run `omnibridge ingest PATH`")
    for c in report["collections"]:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(c["assets"].items())) or "empty"
        typer.echo(f"{c['name']}: {counts}  ({c['root']})")
    for job in report["jobs"]:
        progress = f" {job['done']}/{job['queued']}" if job["status"] == "running" else ""
        typer.echo(f"  job {job['id']} {job['status']}{progress} {job['source']}: indexed {job['indexed']}, "
                   f"duplicates {job['duplicates']}, unchanged {job['skipped']}, failed {job['failed']}, "
                   f"removed {job['removed']}" + (f" ({job['error']})" if job["error"] else ""))
    for err in report["errors"]:
        typer.secho(f"  failed: {err['path']}: {err['error']}", fg=typer.colors.YELLOW)
    from ingest.doctor import quick_check

    problem = quick_check(svc)["problem"]
    if problem:
        typer.secho(f"warning: {problem}", fg=typer.colors.RED, err=True)


@app.command()
def doctor(
    repair: Annotated[bool, typer.Option("--repair", help="fix what differs: re-embed missing or damaged points, "
                                                          "delete orphans, rescan each collection's folders")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Check that the vector store holds exactly what the database lists, per model space; --repair makes it so."""
    from ingest import doctor as doc

    report = doc.check(_services(), repair=repair)
    if as_json:
        typer.echo(json.dumps(report, default=str))
    else:
        for sp in report["spaces"]:
            line = (f"{sp['space']} ({sp['model']}): database {sp['sql_points']} points, store {sp['store_points']}; "
                    f"missing {sp['missing']}, orphans {sp['orphans']}, damaged vectors {sp['bad']}")
            typer.secho(line, fg=typer.colors.GREEN if not (sp["missing"] or sp["orphans"] or sp["bad"]
                                                            or sp["damaged"]) else typer.colors.YELLOW)
            if sp["damaged"]:
                typer.secho(f"  damaged: {sp['damaged']}", fg=typer.colors.RED)
        for job in report["repaired"].get("reembedded_jobs", []):
            typer.echo(f"re-embedded in job {job['id']} ({job['collection']}): indexed {job['indexed']}, "
                       f"failed {job['failed']}")
        for job in report["repaired"].get("adopted_jobs", []):
            typer.echo(f"indexed again files the database did not know ({job['collection']}, job {job['id']}): "
                       f"{job['indexed']}, failed {job['failed']}")
        for job in report["repaired"].get("rescanned_jobs", []):
            typer.echo(f"rescanned {job['collection']} (job {job['id']}): new or changed {job['indexed']}, "
                       f"removed {job['removed']}, failed {job['failed']}")
        if not repair:
            typer.echo("consistent" if report["ok"] else "run `omnibridge doctor --repair` to fix this")
    if not report["ok"] and not repair:
        raise typer.Exit(1)


@app.command()
def backup(dest: Annotated[Path, typer.Argument(help="a new folder for the copy")]) -> None:
    """Copy the embedded data (SQLite database, uploaded and generated files, vector store) into DEST."""
    from ingest import backup as bk

    try:
        typer.echo(json.dumps(bk.backup(_services().settings, dest)))
    except ValueError as e:
        _fail(str(e))


@app.command()
def restore(src: Annotated[Path, typer.Argument(help="a folder written by `omnibridge backup`")]) -> None:
    """Put a backup back (the current data is moved aside, not deleted), then repair the index against it."""
    from ingest import backup as bk
    from ingest import doctor as doc

    settings = get_settings()
    try:
        aside = bk.restore(settings, src)
    except ValueError as e:
        _fail(str(e))
    typer.echo(f"restored {src}; the data it replaced is in {aside}")
    report = doc.check(_services(), repair=True)
    done = report["repaired"]
    typer.echo(f"index repaired: {sum(j['indexed'] for j in done['reembedded_jobs'])} re-embedded, "
               f"{sum(j['indexed'] for j in done['adopted_jobs'])} files indexed after the backup found again, "
               f"{sum(j['indexed'] for j in done['rescanned_jobs'])} new or changed files found")


@app.command()
def search(
    text: Annotated[Optional[str], typer.Argument(help="what to look for")] = None,
    image: Annotated[Optional[Path], typer.Option("--image", help="search by this image instead of text")] = None,
    asset: Annotated[Optional[int], typer.Option("--asset", help="more like this indexed asset (an id from --json)")] = None,
    collection: Annotated[Optional[str], typer.Option("--collection", "-c")] = None,
    k: Annotated[int, typer.Option("--k", min=1, max=1000, help="number of hits")] = 10,
    offset: Annotated[int, typer.Option("--offset", min=0, help="skip this many hits (paging)")] = 0,
    fmt: Annotated[Optional[list[str]], typer.Option("--format", help="only these formats (JPEG, PNG, ...)")] = None,
    tag: Annotated[Optional[list[str]], typer.Option("--tag", help="only images with any of these tags")] = None,
    min_width: Annotated[Optional[int], typer.Option("--min-width", min=0)] = None,
    min_height: Annotated[Optional[int], typer.Option("--min-height", min=0)] = None,
    since: Annotated[Optional[str], typer.Option("--since", help="files modified on or after (2024-05-31)")] = None,
    until: Annotated[Optional[str], typer.Option("--until", help="files modified up to (2024-06-30)")] = None,
    include_synthetic: Annotated[bool, typer.Option("--include-synthetic", help="also generated images")] = False,
    all_duplicates: Annotated[bool, typer.Option("--all-duplicates", help="do not collapse near-duplicates")] = False,
    texts: Annotated[bool, typer.Option("--texts", help="find captions, OCR text and documents instead of images")] = False,
    mode: Annotated[str, typer.Option("--mode", help="hybrid (vectors + keywords), vector or keyword")] = "hybrid",
    min_relevance: Annotated[Optional[float], typer.Option(
        "--min-relevance", min=0.0, max=1.0, help="show hits down to this score (default 0: every ranked hit, the unlikely ones below the line)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Find images (or texts) by a text, an image file or an indexed asset ("more like this").

    Scores are calibrated relevance in 0..1; when nothing is relevant the answer is "no good match"."""
    if sum(x is not None for x in (text, image, asset)) != 1:
        _fail("give one of: a text query, --image PATH or --asset ID")
    filters = {"format": fmt, "tags": tag, "min_width": min_width, "min_height": min_height, "since": since,
               "until": until}
    try:
        result = _engine().search(text=text, image=image, asset_id=asset, collection=collection, k=k,
                                  offset=offset, filters=filters, include_synthetic=include_synthetic,
                                  collapse=not all_duplicates, target="texts" if texts else "images", mode=mode,
                                  min_relevance=min_relevance)
    except ValueError as e:
        _fail(str(e))
    if as_json:
        typer.echo(json.dumps(result))
        return
    for note in result["notes"]:
        typer.secho(f"note: {note}", fg=typer.colors.YELLOW)
    if result["no_match"] and result["best_score"] is None:
        typer.echo("no match: nothing indexed matches the collection and filters (see `omnibridge status`)")
    elif result["no_match"] and offset == 0:
        advice = "another example image" if text is None else "other words"
        typer.echo(f"no good match: the closest result scores {result['best_score']:.2f}, under the "
                   f"{result['threshold']:.2f} of a likely match. Try {advice} or fewer filters")
    elif not result["hits"]:
        typer.echo("no more hits at this --offset")
    line_drawn = False
    for h in result["hits"]:
        if not h.get("likely", True) and not line_drawn:  # below the line: ranked on, marked unlikely
            typer.echo(f"---- below the line: unlikely matches (under {result['threshold']:.2f}) ----")
            line_drawn = True
        how = f"  [{h['matched']}]" if h.get("matched") != "visual" else ""
        if texts:
            typer.echo(f"{h['score']:.2f}  text #{h['id']} of #{h['asset_id']} ({h['kind']})  {h['content'][:100]!r}"
                       f"  {h['path']}{how}")
            continue
        caption = f"  {h['caption']}" if h.get("caption") else ""
        dups = f"  (+{h['duplicates']} near-duplicates)" if h.get("duplicates") else ""
        typer.echo(f"{h['score']:.2f}  #{h['id']}  {h['path']}{caption}{dups}{how}")


def _engine():
    from .engine import Engine

    return Engine(_services())


@app.command()
def answer(
    question: Annotated[str, typer.Argument(help="a question about the collection's images")],
    collection: Annotated[Optional[str], typer.Option("--collection", "-c")] = None,
    k: Annotated[int, typer.Option("--k", min=1, max=20, help="images retrieved as evidence")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="print {answer, citations, abstained, evidence}")] = False,
) -> None:
    """Answer from the retrieved images' texts, citing the asset ids used; abstain when the evidence is weak."""
    from .answer import Answer

    try:
        final = None
        for piece in _engine().stream_answer(question, collection=collection, k=k):
            if isinstance(piece, Answer):
                final = piece
            elif not as_json:
                typer.echo(piece, nl=False)
    except (ValueError, ImportError) as e:
        _fail(str(e))
    if as_json:
        typer.echo(json.dumps(final.to_dict()))
        return
    if final.abstained:
        typer.echo(final.answer)
    else:
        typer.echo("")
    for n, e in enumerate(final.evidence, 1):
        mark = "cited" if e.asset_id in final.citations else "shown"
        typer.echo(f"  [{n}] #{e.asset_id} {e.score:.2f} {mark}: {e.caption or ''} {e.image_path or ''}")


@app.command("generate-similar")
def generate_similar(
    asset_id: Annotated[int, typer.Argument(help="the image to vary (an id from `omnibridge search --json`)")],
    n: Annotated[int, typer.Option("--n", help="variants, 1..16")] = 4,
    seed: Annotated[int, typer.Option("--seed", help="variant i uses seed + i")] = 0,
    strength: Annotated[float, typer.Option("--strength", help="0 < s <= 1: how far from the source")] = 0.6,
    steps: Annotated[int, typer.Option("--steps", help="scheduler steps at strength 1")] = 30,
    prompt: Annotated[Optional[str], typer.Option("--prompt", help="default: the asset's caption")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="folder for the images (default: the data folder)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Variants of an indexed image with the configured diffusers model (OMNIBRIDGE_GENERATOR), saved with their
    lineage and indexed as synthetic (left out of searches unless --include-synthetic)."""
    from .generate import GenerationParams, GeneratorUnavailable

    try:
        results = _engine().generate_similar(asset_id, GenerationParams(n=n, seed=seed, strength=strength,
                                                                        steps=steps), prompt=prompt, out=out)
    except (ValueError, GeneratorUnavailable) as e:
        _fail(str(e))
    if as_json:
        typer.echo(json.dumps({"variants": results}))
        return
    for r in results:
        typer.echo(f"#{r['asset_id']}  seed {r['seed']}  {r['path']}  (from #{r['source_asset_id']}: {r['prompt']!r})")


keys_app = typer.Typer(help="API keys for `omnibridge serve`: a secret shown once, per-collection scopes.",
                       no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Argument(help="who or what uses the key")],
    scope: Annotated[list[str], typer.Option("--scope", help="COLLECTION=read|write, '*' for all (repeatable)")],
) -> None:
    """Create a key and print its secret (only its hash is stored)."""
    from .api.auth import create_api_key

    scopes = {}
    for item in scope:
        collection, sep, level = item.partition("=")
        if not sep:
            _fail(f"--scope {item!r}: write COLLECTION=read or COLLECTION=write ('*' for every collection)")
        scopes[collection] = level
    try:
        secret = create_api_key(_services(), name, scopes)
    except ValueError as e:
        _fail(str(e))
    typer.echo(secret)


@keys_app.command("revoke")
def keys_revoke(name: Annotated[str, typer.Argument(help="the key's name")]) -> None:
    """Revoke every key of this name."""
    from .api.auth import revoke_api_key

    n = revoke_api_key(_services(), name)
    if not n:
        _fail(f"no active key named {name!r}")
    typer.echo(f"revoked {n} key(s) named {name!r}")


@app.command()
def serve(
    host: Annotated[Optional[str], typer.Option("--host", help="address to listen on [default: OMNIBRIDGE_API_HOST]")] = None,
    port: Annotated[Optional[int], typer.Option("--port", min=1, max=65535, help="[default: OMNIBRIDGE_API_PORT]")] = None,
) -> None:
    """Run the HTTP API (OpenAPI at /docs); every call but /health needs a key from `omnibridge keys create`."""
    import uvicorn

    from engine.api.limits import SERVER_LIMITS

    settings = get_settings()
    uvicorn.run("engine.api.main:create_app", factory=True, host=host or settings.api_host,
                port=port or settings.api_port, log_level="info", **SERVER_LIMITS)


@app.command("worker")
def worker_(
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, help="parallel tasks in this worker")] = 1,
    loglevel: Annotated[str, typer.Option("--loglevel")] = "INFO",
) -> None:
    """Run an ingestion worker (production: with OMNIBRIDGE_BROKER_URL=redis://...)."""
    from ingest.worker import app as celery_app

    celery_app.worker_main(["worker", f"--loglevel={loglevel}", f"--concurrency={concurrency}",
                            "--pool", "threads" if concurrency > 1 else "solo", "--queues", "omnibridge-ingest"])


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the default path never reaches a hub
    from sqlalchemy.exc import DatabaseError as SQLError

    from .db import DatabaseError
    from .vectors import StoreDamaged

    try:
        app()
    except (DatabaseError, StoreDamaged) as e:  # a damaged or unreachable store: one line and the fix
        _print_error(str(e))
    except SQLError as e:
        url = get_settings().db_url
        _print_error(f"the metadata database {url} failed: {str(e.orig or e).splitlines()[0]}; check it with "
                     "`omnibridge doctor`, restore a backup with `omnibridge restore DIR` (README: Backup and restore)")


def _print_error(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    sys.exit(2)


if __name__ == "__main__":
    main()
