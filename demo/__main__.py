"""``python -m demo`` (what ``make demo`` runs). See ``demo/__init__.py`` and ``--help``."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from demo import REPO
from demo.airflow_api import AirflowApi
from demo.hygiene import print_scan, scan_for_keys
from demo.page_vault import page_vault_token
from demo.processes import DemoError, ManagedProcess, Supervisor, free_ports, port_is_free, shown, wait_for
from demo.report import Check, ConsumerRow, TrackedRun, check_key, follow, print_summary
from demo.services import (
    ADMIN_USER,
    HOUR_SECONDS,
    RESTRICTED_KEY,
    RESTRICTED_USER,
    Airflow,
    AirflowPorts,
    Kosli,
    Vault,
    start_airflow,
    start_consumer_sandboxes,
    start_kosli,
    start_restricted_ui,
    start_vault,
)
from demo.state import prepare_state_dir
from demo.world import KEYS, VAULT_MOUNT, seed_keys_and_consumers, write_inventory
from kosli_rotation.fingerprints import fingerprint
from kosli_rotation.inventory import load_inventory
from sandbox.fleet import ConsumerFleet

DEFAULT_API_PORT = 8080
SERVICE_START_TIMEOUT = 30.0
AIRFLOW_START_TIMEOUT = 300.0  # first start migrates a fresh database; slow on 2 cores
DAGS_LISTED_TIMEOUT = 180.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m demo",
        description="Start OpenBao, the Kosli and consumer sandboxes and Airflow locally, rotate two Kosli keys "
        "and watch.",
    )
    parser.add_argument(
        "--exit-when-done",
        action="store_true",
        help="stop everything after the summary and the secret scan; exit 0 only if both runs succeeded, every "
        "check holds and no key is found in Airflow's database or logs",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        help="seconds from start until both runs must have finished (default 600)",
    )
    parser.add_argument("--port", type=int, help=f"port of the Airflow UI and API (default {DEFAULT_API_PORT} if free)")
    parser.add_argument(
        "--restricted-port",
        type=int,
        help=f"also serve the UI on this port with a per-DAG auth manager (demo/auth.py) and a user {RESTRICTED_USER} "
        f"who may read only {RESTRICTED_KEY}'s DAGs (password in the state dir's airflow/passwords.json)",
    )
    parser.add_argument(
        "--state-dir", type=Path, default=REPO / ".demo", help="where logs and state go; wiped at start (default .demo)"
    )
    return parser.parse_args(argv)


def choose_api_port(requested: int | None, fallback: int) -> int:
    """8080 if free, else ``fallback``, and say so; a port asked for with --port must be free."""
    if requested is not None:
        if not port_is_free(requested):
            raise DemoError(f"port {requested} (--port) is already in use: pick another one")
        return requested
    if port_is_free(DEFAULT_API_PORT):
        return DEFAULT_API_PORT
    print(f"Port {DEFAULT_API_PORT} is taken, so the Airflow UI and API use port {fallback} instead.")
    return fallback


class Demo:
    """One demo: start the services, trigger two rotations, follow them, check, scan, then wait or exit."""

    def __init__(self, args: argparse.Namespace, supervisor: Supervisor) -> None:
        self.args = args
        self.supervisor = supervisor
        self.state_dir: Path = args.state_dir.resolve()
        self.deadline = time.monotonic() + args.timeout
        self.fleet: ConsumerFleet | None = None  # the consumer sandboxes, in threads of this process
        self.consumers: dict[str, list[dict]] = {}  # each key's consumer entries, for the inventory
        self.restricted_url: str | None = None

    def stop_consumer_sandboxes(self) -> None:
        fleet, self.fleet = self.fleet, None
        if fleet is not None:
            fleet.stop()

    def within(self, cap: float) -> float:
        """A wait's own limit, cut short by what is left of --timeout."""
        return max(0.0, min(cap, self.deadline - time.monotonic()))

    def run(self) -> int:
        prepare_state_dir(self.state_dir)
        print(f"Kosli key rotation demo; state, logs and consumer files in {shown(self.state_dir)}/")
        vault, kosli = self.start_services()
        old_fingerprints = {key.name: fingerprint(kosli.seeded.secrets[key.service_account]) for key in KEYS}
        airflow, api, batch_labels = self.start_airflow(vault, kosli)
        runs = self.start_rotations(api, batch_labels)
        self.print_banner(airflow, api, runs)
        try:
            follow(api, runs, self.supervisor, timeout=self.within(self.args.timeout))
            passed = print_summary([(run, *self.check(run, vault, kosli, old_fingerprints)) for run in runs])
            clean = self.scan_for_keys(airflow, api, runs, vault, kosli)
        except DemoError as error:
            if self.args.exit_when_done:
                raise
            print(f"\nThe demo could not finish: {error}", file=sys.stderr)
            passed = clean = False
        if self.args.exit_when_done:
            return 0 if passed and clean else 1
        self.serve_until_interrupted(airflow)
        return 0

    def check(
        self, run: TrackedRun, vault: Vault, kosli: Kosli, old_fingerprints: dict[str, str]
    ) -> tuple[list[Check], list[ConsumerRow]]:
        assert self.fleet is not None
        names = {entry["name"] for entry in self.consumers[run.key.name]}
        return check_key(
            run,
            vault=vault.client(),
            kosli_url=kosli.url,
            old_fingerprint=old_fingerprints[run.key.name],
            consumers=[consumer for name, consumer in self.fleet.seeded.items() if name in names],
        )

    def scan_for_keys(
        self, airflow: Airflow, api: AirflowApi, runs: list[TrackedRun], vault: Vault, kosli: Kosli
    ) -> bool:
        """Look for every key involved in Airflow's database and files (see demo/hygiene.py); True if none is."""
        kv = vault.client().secrets.kv.v2
        new_keys = {
            key.name: kv.read_secret_version(
                path=key.vault_path, mount_point=VAULT_MOUNT, raise_on_deleted_version=True
            )["data"]["data"].get("key")
            for key in KEYS
        }
        control_key = KEYS[0]
        result = scan_for_keys(
            api=api,
            airflow_home=airflow.home,
            console_log=airflow.process.log,
            runs=runs,
            keys=[kosli.seeded.admin_key, *kosli.seeded.secrets.values(), *new_keys.values()],
            control=(control_key.cli_config(self.state_dir), new_keys[control_key.name]),
        )
        print_scan(result)
        return result.clean

    def start_services(self) -> tuple[Vault, Kosli]:
        vault_port = free_ports(1)[0]
        vault = start_vault(self.supervisor, self.state_dir, vault_port, self.within(SERVICE_START_TIMEOUT))
        print(f"  OpenBao dev server   {vault.url}  (log {shown(vault.process.log)})")
        kosli = start_kosli(self.supervisor, self.state_dir, self.within(SERVICE_START_TIMEOUT))
        print(
            f"  Kosli sandbox        {kosli.url}  (1 Kosli hour lasts {HOUR_SECONDS} s; log {shown(kosli.process.log)})"
        )
        self.fleet = fleet = start_consumer_sandboxes(vault, kosli)
        sandboxes = ", ".join(f"{name} :{url.rsplit(':', 1)[1]}" for name, url in fleet.services.items())
        print(f"  consumer sandboxes   {sandboxes} (threads of this process)")
        self.consumers = seed_keys_and_consumers(vault.client(), kosli.seeded, fleet, self.state_dir)
        for key in KEYS:
            held = fingerprint(kosli.seeded.secrets[key.service_account])
            print(f"  seeded {key.name:<18} key {held} in Vault {key.vault_path} and its consumers:")
            for entry in self.consumers[key.name]:
                consumer = fleet.seeded[entry["name"]]
                extra = f"; {consumer.canary}" if consumer.canary else ""
                print(f"           {consumer.name:<20} {consumer.kind:<20} {consumer.where}{extra}")
        return vault, kosli

    def start_airflow(self, vault: Vault, kosli: Kosli) -> tuple[Airflow, AirflowApi, dict[str, list[str]]]:
        assert self.fleet is not None
        inventory, batch_labels = write_inventory(self.state_dir, self.consumers)
        count = sum(len(entries) for entries in self.consumers.values())
        print(f"  inventory            {shown(inventory)} (validated: {len(KEYS)} keys, {count} consumers)")
        api_port, *other_ports = free_ports(4)
        ports = AirflowPorts(choose_api_port(self.args.port, api_port), *other_ports)
        # The Key rotation page reads Vault with a token of its own policy: metadata and consumer notes, no key.
        page_token = page_vault_token(vault.client(), load_inventory(inventory), VAULT_MOUNT)
        airflow = start_airflow(
            self.supervisor,
            self.state_dir,
            ports,
            inventory=inventory,
            vault=vault,
            kosli=kosli,
            connections=self.fleet.airflow_env(),
            page_vault_token=page_token,
        )
        log = shown(airflow.process.log)
        print(f"Starting Airflow (standalone, output in {log}); the first start takes a minute or two...")
        started = time.monotonic()
        api = AirflowApi(airflow.url, ADMIN_USER, airflow.password)
        watch = [airflow.process]
        wait_for(
            f"the Airflow API at {airflow.url}",
            lambda: api.healthy() or None,
            timeout=self.within(AIRFLOW_START_TIMEOUT),
            watch=watch,
            hint=f"Read {log}.",
            interval=1.0,
        )
        api.log_in()
        self.wait_for_dags(api, watch, log)
        print(f"  Airflow is up after {time.monotonic() - started:.0f} s; both DAGs are parsed")
        if self.args.restricted_port is not None:
            self.start_restricted_ui(airflow)
        return airflow, api, batch_labels

    def start_restricted_ui(self, airflow: Airflow) -> None:
        port = self.args.restricted_port
        if not port_is_free(port):
            raise DemoError(f"port {port} (--restricted-port) is already in use: pick another one")
        self.restricted_url = url = start_restricted_ui(self.supervisor, self.state_dir, airflow, port)
        wait_for(
            f"the restricted API server at {url}",
            lambda: AirflowApi(url, "", "").healthy() or None,
            timeout=self.within(AIRFLOW_START_TIMEOUT),
            watch=[self.supervisor.processes[-1]],
            hint=f"Read {shown(self.state_dir / 'airflow-restricted.log')}.",
            interval=1.0,
        )
        print(f"  restricted UI        {url}/  (user {RESTRICTED_USER}: only {RESTRICTED_KEY}'s DAGs)")

    def wait_for_dags(self, api: AirflowApi, watch: list[ManagedProcess], log: str) -> None:
        wanted = {key.dag_id for key in KEYS}
        try:
            wait_for(
                "both rotation DAGs listed by the Airflow API",
                lambda: wanted <= api.dag_ids() or None,
                timeout=self.within(DAGS_LISTED_TIMEOUT),
                watch=watch,
                hint=f"Read {log} and the UI's DAG import errors.",
                interval=2.0,
            )
        except DemoError as error:
            problems = api.import_errors()
            if problems:
                raise DemoError(f"{error} Import errors: {'; '.join(problems)}") from None
            raise

    def start_rotations(self, api: AirflowApi, batch_labels: dict[str, list[str]]) -> list[TrackedRun]:
        """Unpause both DAGs and trigger one manual run of each, with the strategy it demonstrates."""
        runs = []
        for key in KEYS:
            api.unpause(key.dag_id)
            runs.append(TrackedRun(key, api.trigger(key.dag_id, key.conf), batch_labels[key.name]))
        return runs

    def print_banner(self, airflow: Airflow, api: AirflowApi, runs: list[TrackedRun]) -> None:
        rule = "=" * 100
        print(f"\n{rule}")
        print(f"Airflow UI   {airflow.url}/")
        print(f"Login        user {ADMIN_USER}, password {airflow.password}  (also in {shown(airflow.password_file)})")
        for run in runs:
            conf = run.key.conf
            how = f"strategy {conf['strategy']}" + (
                f", grace {conf['grace_hours']} h = {conf['grace_hours'] * HOUR_SECONDS} s here"
                if "grace_hours" in conf
                else ""
            )
            print(f"DAG          {run.key.dag_id}  run {run.run_id}  ({how})")
            print(f"               {api.run_page(run.key.dag_id, run.run_id)}")
        state = shown(self.state_dir)
        print(f"Logs         Airflow {state}/airflow.log, task logs {state}/airflow/logs/,")
        print(f"             OpenBao {state}/bao.log, Kosli sandbox {state}/kosli.log")
        print(rule)
        print("Following the runs (Ctrl-C stops the demo):")

    def serve_until_interrupted(self, airflow: Airflow) -> None:
        print(f"\nEverything keeps running: explore {airflow.url}/ . Press Ctrl-C to stop the demo.")
        reported: set[str] = set()
        while True:
            for process in self.supervisor.processes:
                code = process.exit_code()
                if code is not None and process.name not in reported:
                    reported.add(process.name)
                    print(f"{process.name} exited unexpectedly (code {code}); read {shown(process.log)}")
            time.sleep(1.0)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # progress shows at once when piped
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM stops the demo like Ctrl-C
    supervisor = Supervisor()
    demo = Demo(args, supervisor)
    try:
        return demo.run()
    except DemoError as error:
        print(f"\nThe demo failed: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nInterrupted.")
        return 1 if args.exit_when_done else 0
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)  # a second Ctrl-C must not leave processes behind
        if supervisor.processes or demo.fleet is not None:
            print("Stopping Airflow, the Kosli sandbox, OpenBao and the consumer sandboxes...")
            supervisor.stop_all()
            demo.stop_consumer_sandboxes()
            print("Stopped.")


if __name__ == "__main__":
    sys.exit(main())
