import { Dialog, showDialog } from '@jupyterlab/apputils';
import { Message } from '@lumino/messaging';
import { Widget } from '@lumino/widgets';

import {
  ApiError,
  IDiff,
  IRecordingDetails,
  IRecordingInfo,
  IRecordingReply,
  IReplayJob,
  requestAPI
} from './api';
import { formatCreated, formatSize, formatValue, plural, shortHash } from './format';

/** Options of the panel that the plugin can change at run time. */
export interface IPanelOptions {
  /** Seconds between list reloads while visible; 0 = off. */
  pollInterval: number;
  /** Seconds between replay progress polls. */
  replayPollInterval: number;
  /** Called by the "Open in notebook" button. */
  openInNotebook: (name: string) => void;
}

/** The columns of the list, each sortable. */
type Column = 'name' | 'created' | 'status' | 'results' | 'steps' | 'size';

/** Rows shown at first, and added by "Show more": the DOM stays small whatever the store holds. */
const PAGE = 100;

const COLUMNS: { key: Column; title: string; numeric?: boolean }[] = [
  { key: 'name', title: 'name' },
  { key: 'created', title: 'created' },
  { key: 'status', title: 'status' },
  { key: 'results', title: 'results' },
  { key: 'steps', title: 'steps', numeric: true },
  { key: 'size', title: 'size', numeric: true }
];

/** Make an element; text is always set with `textContent` (never HTML). */
function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  className = '',
  text?: string
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  if (className) {
    node.className = className;
  }
  if (text !== undefined) {
    node.textContent = text;
  }
  return node;
}

/** The message of an error, for the user. */
export function describeError(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/** `AUC 0.8873 · …`: a recording's headline results, as one line. */
function headline(info: IRecordingInfo): string {
  const results = info.results ?? {};
  return Object.entries(results)
    .map(([label, value]) => `${label} ${formatValue(value)}`)
    .join(' · ');
}

/**
 * Split a replay error into one line of cause and the traceback below it.
 *
 * The server's message is the error's text: its first lines say what failed
 * and where ("node ml.select failed …", "on worker …"), then comes the remote
 * traceback, if any.
 */
export function splitError(message: string): { cause: string; traceback: string } {
  const lines = message.split('\n');
  const at = lines.findIndex(line => /traceback/i.test(line));
  const head = (at >= 0 ? lines.slice(0, at) : lines.slice(0, 1)).map(l => l.trim()).filter(Boolean);
  const rest = at >= 0 ? lines.slice(at + 1) : lines.slice(1);
  const indent = Math.min(...rest.filter(l => l.trim()).map(l => l.length - l.trimStart().length), 99);
  return {
    cause: head.join(' ') || 'replay failed',
    traceback: rest.map(l => l.slice(indent)).join('\n').trim()
  };
}

/**
 * The "Recordings" sidebar, an experiment tracker's panel: the store's
 * recordings with their headline results (search, sort, select two to diff),
 * the selected one's details, and Replay and Delete actions.
 */
export class RecordingsPanel extends Widget {
  constructor(options: IPanelOptions) {
    super();
    this.options = options;
    this.id = 'julius-recordings';
    this.title.caption = 'Recordings';
    this.addClass('jp-JuliusRecordings');

    const header = h('div', 'jp-JuliusRecordings-header');
    header.appendChild(h('span', 'jp-JuliusRecordings-title', 'Recordings'));
    this.refreshButton = h('button', 'jp-JuliusRecordings-refresh jp-mod-styled', 'Refresh');
    this.refreshButton.title = 'Reload the list of recordings';
    this.refreshButton.onclick = () => void this.refresh();
    header.appendChild(this.refreshButton);

    const tools = h('div', 'jp-JuliusRecordings-tools');
    this.searchInput = h('input', 'jp-JuliusRecordings-search jp-mod-styled');
    this.searchInput.type = 'search';
    this.searchInput.placeholder = 'Search name or note';
    this.searchInput.oninput = () => this.setSearch(this.searchInput.value);
    this.diffButton = h('button', 'jp-JuliusRecordings-diffButton jp-mod-styled', 'Diff');
    this.diffButton.title = 'Tick two recordings to compare them';
    this.diffButton.disabled = true;
    this.diffButton.onclick = () => {
      const [a, b] = this._compare;
      void this.diff(a, b);
    };
    tools.append(this.searchInput, this.diffButton);

    this.statusNode = h('div', 'jp-JuliusRecordings-status');
    this.errorNode = h('div', 'jp-JuliusRecordings-error');
    this.errorNode.hidden = true;

    this.listBox = h('div', 'jp-JuliusRecordings-listBox');
    const table = h('table', 'jp-JuliusRecordings-list');
    const head = h('thead');
    const headRow = h('tr');
    headRow.appendChild(h('th', 'jp-JuliusRecordings-checkCol'));
    for (const column of COLUMNS) {
      const th = h('th', 'jp-JuliusRecordings-sortable', column.title);
      th.dataset.column = column.key;
      th.title = `Sort by ${column.title}`;
      th.onclick = () => this.sortBy(column.key);
      headRow.appendChild(th);
    }
    head.appendChild(headRow);
    this.headRow = headRow;
    this.listNode = h('tbody');
    table.append(head, this.listNode);
    this.listBox.appendChild(table);
    // one listener for the whole list: a store can hold thousands of recordings
    this.listNode.onclick = event => {
      const target = event.target as HTMLElement;
      const row = target.closest('.jp-JuliusRecordings-item') as HTMLElement | null;
      if (!row?.dataset.name) {
        return;
      }
      if (target instanceof HTMLInputElement && target.type === 'checkbox') {
        this.toggleCompare(row.dataset.name, target.checked);
      } else {
        void this.select(row.dataset.name);
      }
    };
    this.detailsNode = h('div', 'jp-JuliusRecordings-details');
    this.node.append(header, tools, this.statusNode, this.errorNode, this.listBox, this.detailsNode);
    this.showSortIndicator();
  }

  /** The recordings shown, newest first. */
  get recordings(): ReadonlyArray<IRecordingInfo> {
    return this._recordings;
  }

  /** The name of the selected recording, or null. */
  get selected(): string | null {
    return this._selected;
  }

  /** The recordings ticked for a diff (at most two, oldest tick first). */
  get compared(): ReadonlyArray<string> {
    return this._compare;
  }

  /** Apply new settings (poll intervals). */
  configure(options: Partial<IPanelOptions>): void {
    this.options = { ...this.options, ...options };
    this.startPolling();
  }

  /** Reload the list from `GET /julius/api/recordings`. */
  async refresh(): Promise<void> {
    const started = performance.now();
    // refreshes overlap (polling, a replay's end, the button): only the latest one's answer counts
    const generation = ++this.refreshes;
    this.statusNode.textContent = 'Loading…';
    try {
      const reply = await requestAPI<{ recordings: IRecordingInfo[] }>('recordings');
      if (generation !== this.refreshes) {
        return;
      }
      this._recordings = reply.recordings;
      this.showError(null);
      this.buildRows();
      this.renderList();
      const ms = Math.round(performance.now() - started);
      this.loadedText = `${plural(this._recordings.length, 'recording')} · loaded in ${ms} ms`;
      this.node.dataset.loadMs = String(ms);
      this.showCount();
      const names = new Set(this._recordings.map(r => r.name));
      this._compare = this._compare.filter(name => names.has(name));
      this.updateDiffButton();
      if (this._selected && !names.has(this._selected)) {
        void this.select(null);
      }
    } catch (error) {
      if (generation !== this.refreshes) {
        return;
      }
      this.statusNode.textContent = '';
      if (error instanceof ApiError && error.status === 404) {
        this.showError(
          'The julius_magics server extension is not available on this Jupyter server. ' +
            'Install julius_magics in the environment that runs JupyterLab and restart it ' +
            '(check with: jupyter server extension list).'
        );
      } else {
        this.showError(describeError(error));
      }
    }
  }

  /** Show only recordings whose name or note contains `text` (any case). */
  setSearch(text: string): void {
    const started = performance.now();
    this.search = text.trim().toLowerCase();
    if (this.searchInput.value !== text) {
      this.searchInput.value = text;
    }
    this.shown = PAGE;
    this.renderList();
    this.showCount();
    this.node.dataset.searchMs = (performance.now() - started).toFixed(1);
  }

  /** Sort by `column`; a second call on the same column reverses the order. */
  sortBy(column: Column, descending?: boolean): void {
    const started = performance.now();
    this.sortDescending = descending ?? (this.sortColumn === column ? !this.sortDescending : column === 'created');
    this.sortColumn = column;
    this.shown = PAGE;
    this.showSortIndicator();
    this.renderList();
    this.node.dataset.sortMs = (performance.now() - started).toFixed(1);
  }

  /** Select a recording and show its details (null clears the selection). */
  async select(name: string | null): Promise<void> {
    this._selected = name;
    for (const [rowName, row] of this.rows) {
      row.classList.toggle('jp-mod-selected', rowName === name);
    }
    if (name === null) {
      this.detailsNode.replaceChildren();
      delete this.detailsNode.dataset.name;
      return;
    }
    const info = this._recordings.find(r => r.name === name);
    this.renderDetails(name, info ?? null, null);
    try {
      const reply = await requestAPI<IRecordingReply>(`recordings/${encodeURIComponent(name)}`);
      if (this._selected === name) {
        this.renderDetails(name, reply.info, reply.details);
      }
    } catch (error) {
      if (this._selected === name) {
        this.detailsNode
          .querySelector('.jp-JuliusRecordings-detailsBody')
          ?.replaceChildren(h('div', 'jp-JuliusRecordings-error', describeError(error)));
      }
    }
  }

  /** Compare two recordings (`GET /julius/api/diff`) and show the differences as a table. */
  async diff(a: string, b: string): Promise<IDiff | null> {
    this._selected = null;
    for (const row of this.rows.values()) {
      row.classList.remove('jp-mod-selected');
    }
    const box = h('div', 'jp-JuliusRecordings-diff');
    box.appendChild(h('h3', 'jp-JuliusRecordings-detailsName', `${a} vs ${b}`));
    const body = h('div', 'jp-JuliusRecordings-status', 'Comparing…');
    box.appendChild(body);
    this.detailsNode.replaceChildren(box);
    try {
      const d = await requestAPI<IDiff>(
        `diff?a=${encodeURIComponent(a)}&b=${encodeURIComponent(b)}`
      );
      body.replaceWith(renderDiff(d));
      return d;
    } catch (error) {
      body.replaceWith(h('div', 'jp-JuliusRecordings-error', describeError(error)));
      return null;
    }
  }

  /**
   * Delete a recording after the user confirms in a dialog
   * (`confirm: false` skips the dialog, for scripts). Returns true when deleted.
   */
  async delete(name: string, confirm = true): Promise<boolean> {
    if (confirm) {
      const answer = await showDialog({
        title: 'Delete recording',
        body: `Delete recording "${name}" from the store? This cannot be undone.`,
        buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: 'Delete' })]
      });
      if (!answer.button.accept) {
        return false;
      }
    }
    try {
      await requestAPI<void>(`recordings/${encodeURIComponent(name)}`, { method: 'DELETE' });
    } catch (error) {
      this.showError(`Cannot delete ${name}: ${describeError(error)}`);
      return false;
    }
    if (this._selected === name) {
      await this.select(null);
    }
    this._compare = this._compare.filter(n => n !== name);
    await this.refresh();
    this.statusNode.textContent = `deleted ${name} · ${this.statusNode.textContent}`;
    return true;
  }

  /** Start a replay of `name` and show its progress until it ends. */
  async replay(name: string, isolated?: boolean): Promise<IReplayJob | null> {
    if (this._selected !== name) {
      await this.select(name);
    }
    const wantIsolated =
      isolated ??
      (this.detailsNode.querySelector('.jp-JuliusRecordings-isolated') as HTMLInputElement | null)
        ?.checked ??
      false;
    const box = this.replayBox(name);
    box.replaceChildren();
    const bar = h('progress', 'jp-JuliusRecordings-progress');
    const message = h('div', 'jp-JuliusRecordings-progressMessage', 'starting replay…');
    const result = h('div', 'jp-JuliusRecordings-result');
    box.append(bar, message, result);
    let job: IReplayJob;
    try {
      const body: { name: string; isolated?: boolean } = { name };
      if (wantIsolated) {
        body.isolated = true;
      }
      job = await requestAPI<IReplayJob>('replays', { method: 'POST', body: JSON.stringify(body) });
      while (job.state === 'running') {
        this.showProgress(job, bar, message);
        await new Promise(resolve => setTimeout(resolve, 1000 * this.options.replayPollInterval));
        job = await requestAPI<IReplayJob>(`replays/${job.id}`);
      }
    } catch (error) {
      bar.classList.add('jp-mod-failed');
      bar.max = 1;
      bar.value = 1;
      message.textContent = '';
      showFailure(result, 'error', 'replay error', describeError(error));
      return null;
    }
    this.showProgress(job, bar, message);
    this.showResult(job, bar, result);
    // a verified replay changes the recording's status, in the list and the details
    void this.refresh();
    if (this._selected === name) {
      void this.select(name);
    }
    return job;
  }

  protected onAfterShow(msg: Message): void {
    super.onAfterShow(msg);
    void this.refresh();
    this.startPolling();
  }

  protected onAfterHide(msg: Message): void {
    super.onAfterHide(msg);
    this.stopPolling();
  }

  dispose(): void {
    this.stopPolling();
    super.dispose();
  }

  private startPolling(): void {
    this.stopPolling();
    if (this.options.pollInterval > 0 && this.isVisible) {
      this.timer = window.setInterval(() => void this.refresh(), 1000 * this.options.pollInterval);
    }
  }

  private stopPolling(): void {
    if (this.timer !== null) {
      window.clearInterval(this.timer);
      this.timer = null;
    }
  }

  private showError(message: string | null): void {
    this.errorNode.hidden = message === null;
    this.errorNode.textContent = message ?? '';
    this.listBox.hidden = message !== null;
  }

  private showCount(): void {
    const shown = this.visibleCount;
    const total = this._recordings.length;
    this.statusNode.textContent =
      shown === total ? this.loadedText : `${shown} of ${total} shown · ${this.loadedText}`;
  }

  private toggleCompare(name: string, on: boolean): void {
    this._compare = this._compare.filter(n => n !== name);
    if (on) {
      this._compare.push(name);
      if (this._compare.length > 2) {
        const dropped = this._compare.shift()!;
        const box = this.rows.get(dropped)?.querySelector('input') as HTMLInputElement | null;
        if (box) {
          box.checked = false;
        }
      }
    }
    this.updateDiffButton();
  }

  private updateDiffButton(): void {
    this.diffButton.disabled = this._compare.length !== 2;
    this.diffButton.textContent = this._compare.length === 2 ? 'Diff 2' : 'Diff';
  }

  private showSortIndicator(): void {
    for (const th of Array.from(this.headRow.children) as HTMLElement[]) {
      const sorted = th.dataset.column === this.sortColumn;
      th.classList.toggle('jp-mod-sorted', sorted);
      th.dataset.order = sorted ? (this.sortDescending ? 'descending' : 'ascending') : '';
    }
    this.node.dataset.sort = `${this.sortColumn} ${this.sortDescending ? 'descending' : 'ascending'}`;
  }

  /** One row per recording, made once per load; search and sort only reorder them. */
  private buildRows(): void {
    this.rows = new Map();
    for (const rec of this._recordings) {
      const row = h('tr', 'jp-JuliusRecordings-item');
      row.dataset.name = rec.name;
      const check = h('input', 'jp-JuliusRecordings-check');
      check.type = 'checkbox';
      check.title = 'Tick two recordings to diff them';
      check.checked = this._compare.includes(rec.name);
      const checkCell = h('td');
      checkCell.appendChild(check);
      const nameCell = h('td', 'jp-JuliusRecordings-nameCell');
      nameCell.appendChild(h('div', 'jp-JuliusRecordings-name', rec.name));
      if (rec.note) {
        nameCell.appendChild(h('div', 'jp-JuliusRecordings-note', rec.note));
      }
      const created = h('td', 'jp-JuliusRecordings-created', formatCreated(rec.created));
      created.title = rec.created ?? '';
      const status = h('td');
      status.appendChild(h('span', `jp-JuliusRecordings-badge jp-mod-${rec.status}`, rec.status));
      row.append(
        checkCell,
        nameCell,
        created,
        status,
        h('td', 'jp-JuliusRecordings-headline', headline(rec)),
        h('td', 'jp-JuliusRecordings-num', String(rec.steps)),
        h('td', 'jp-JuliusRecordings-num', formatSize(rec.size))
      );
      row.classList.toggle('jp-mod-selected', rec.name === this._selected);
      this.rows.set(rec.name, row);
      this.searchText.set(rec.name, `${rec.name}\n${rec.note ?? ''}`.toLowerCase());
    }
  }

  private sortKey(rec: IRecordingInfo): string | number {
    switch (this.sortColumn) {
      case 'steps':
        return rec.steps;
      case 'size':
        return rec.size;
      case 'results': {
        const first = Object.values(rec.results ?? {})[0];
        const value = first === undefined ? NaN : Number(formatValue(first));
        return Number.isNaN(value) ? -Infinity : value;
      }
      case 'created':
        return rec.created ?? '';
      case 'status':
        return rec.status;
      default:
        return rec.name;
    }
  }

  private renderList(): void {
    const keyed = this._recordings
      .filter(rec => !this.search || this.searchText.get(rec.name)!.includes(this.search))
      .map(rec => ({ rec, key: this.sortKey(rec) }));
    const sign = this.sortDescending ? -1 : 1;
    keyed.sort((x, y) => {
      const order = x.key < y.key ? -1 : x.key > y.key ? 1 : 0;
      return sign * order || (x.rec.name < y.rec.name ? -1 : 1);
    });
    const items = document.createDocumentFragment();
    for (const { rec } of keyed.slice(0, this.shown)) {
      items.appendChild(this.rows.get(rec.name)!);
    }
    this.visibleCount = keyed.length;
    if (keyed.length > this.shown) {
      const more = h('tr', 'jp-JuliusRecordings-moreRow');
      const cell = h('td');
      cell.colSpan = COLUMNS.length + 1;
      const button = h('button', 'jp-JuliusRecordings-more jp-mod-styled',
        `Show ${Math.min(PAGE, keyed.length - this.shown)} more (${this.shown} of ${keyed.length} shown)`);
      button.onclick = event => {
        event.stopPropagation();
        this.shown += PAGE;
        this.renderList();
      };
      cell.appendChild(button);
      more.appendChild(cell);
      items.appendChild(more);
    }
    if (keyed.length === 0) {
      const empty = h('tr', 'jp-JuliusRecordings-empty');
      const cell = h(
        'td',
        '',
        this._recordings.length === 0
          ? 'No recordings yet: record one with %record start NAME.'
          : `No recording matches "${this.searchInput.value}".`
      );
      cell.colSpan = COLUMNS.length + 1;
      empty.appendChild(cell);
      items.appendChild(empty);
    }
    this.listNode.replaceChildren(items);
  }

  private renderDetails(
    name: string,
    info: IRecordingInfo | null,
    details: IRecordingDetails | null
  ): void {
    // keep a replay's progress when the same recording's details are re-rendered
    const previous = this.detailsNode.querySelector('.jp-JuliusRecordings-replay') as HTMLElement | null;
    const keepReplay = previous?.dataset.name === name ? previous : null;
    const previousIsolated = this.detailsNode.querySelector('.jp-JuliusRecordings-isolated') as
      | HTMLInputElement
      | null;
    // the same recording drawn again (its details arrived): what the user ticked meanwhile stays
    const sameRecording = this.detailsNode.dataset.name === name;
    const root = h('div');
    root.appendChild(h('h3', 'jp-JuliusRecordings-detailsName', name));
    if (info?.note) {
      root.appendChild(h('div', 'jp-JuliusRecordings-note', info.note));
    }
    const actions = h('div', 'jp-JuliusRecordings-actions');
    const replay = h('button', 'jp-JuliusRecordings-replayButton jp-mod-styled jp-mod-accept', 'Replay');
    replay.title = 'Replay on a fresh cluster and verify every result';
    replay.onclick = () => void this.replay(name);
    const isolatedLabel = h('label', 'jp-JuliusRecordings-isolatedLabel');
    const isolated = h('input', 'jp-JuliusRecordings-isolated');
    isolated.type = 'checkbox';
    isolated.checked = sameRecording && (previousIsolated?.checked ?? false);
    isolatedLabel.title = "Replay in a rebuilt copy of the recording's environment";
    isolatedLabel.append(isolated, document.createTextNode(' isolated'));
    const open = h('button', 'jp-JuliusRecordings-openButton jp-mod-styled', 'Open in notebook');
    open.title = `Insert a %replay ${name} cell into the active notebook`;
    open.onclick = () => this.options.openInNotebook(name);
    const remove = h('button', 'jp-JuliusRecordings-deleteButton jp-mod-styled jp-mod-warn', 'Delete');
    remove.title = `Delete ${name} from the store (asks first)`;
    remove.onclick = () => void this.delete(name);
    actions.append(replay, isolatedLabel, open, remove);
    root.appendChild(actions);
    root.appendChild(keepReplay ?? h('div', 'jp-JuliusRecordings-replay'));
    const body = h('div', 'jp-JuliusRecordings-detailsBody');
    if (info) {
      body.appendChild(infoTable(info, details));
    }
    if (details) {
      appendDetails(body, details);
    } else {
      body.appendChild(h('div', 'jp-JuliusRecordings-status', 'Loading details…'));
    }
    root.appendChild(body);
    this.detailsNode.replaceChildren(...Array.from(root.childNodes));
    this.detailsNode.dataset.name = name;
  }

  private replayBox(name: string): HTMLElement {
    let box = this.detailsNode.querySelector('.jp-JuliusRecordings-replay') as HTMLElement | null;
    if (!box) {
      box = h('div', 'jp-JuliusRecordings-replay');
      this.detailsNode.appendChild(box);
    }
    box.dataset.name = name;
    return box;
  }

  private showProgress(job: IReplayJob, bar: HTMLProgressElement, message: HTMLElement): void {
    if (job.total > 0) {
      bar.max = job.total;
      bar.value = job.done;
    }
    // once the replay ended its last message is the result's to show, once, below
    const text = job.state === 'running' ? job.message : '';
    message.textContent =
      job.total > 0 ? `${job.done}/${job.total} steps${text ? ` · ${text}` : ''}` : text;
  }

  private showResult(job: IReplayJob, bar: HTMLProgressElement, result: HTMLElement): void {
    const report = job.report;
    // verified only when the server's report says so: complete, and every result matched
    if (job.state === 'verified' && report?.verified) {
      bar.classList.add('jp-mod-verified');
      result.dataset.state = 'verified';
      result.replaceChildren(
        h('strong', '', 'verified'),
        h('span', '', ` — ${plural(report.steps, 'step')} replayed, ${plural(report.results, 'result')} matched`)
      );
      return;
    }
    bar.classList.add('jp-mod-failed');
    if (job.state === 'error' || !report) {
      const { cause, traceback } = splitError(job.message || 'replay failed');
      showFailure(result, 'error', cause, traceback);
      return;
    }
    result.dataset.state = 'failed';
    const mismatches = report.mismatches ?? [];
    let cause: string;
    if (mismatches.length > 0) {
      const m = mismatches[0];
      cause =
        `${mismatches.length} of ${plural(report.results, 'result')} differ: ` +
        `${m.label || m.node}: ${formatValue(m.recorded_value)} → ${formatValue(m.replayed_value)}` +
        (m.cause ? ` (likely cause: ${m.cause})` : '');
    } else if (!report.complete) {
      cause = `reproduced up to step ${report.steps} of an incomplete recording`;
    } else {
      cause = `${plural(report.steps, 'step')} replayed, but the replay was not verified`;
    }
    result.replaceChildren(h('strong', '', 'not verified'), h('span', 'jp-JuliusRecordings-cause', ` — ${cause}`));
    if (mismatches.length > 0) {
      result.appendChild(
        grid(
          ['result', 'recorded', 'replayed', 'likely cause'],
          mismatches.map(m => [
            m.label || m.node,
            formatValue(m.recorded_value),
            formatValue(m.replayed_value),
            m.cause ?? ''
          ]),
          'jp-JuliusRecordings-mismatches'
        )
      );
    }
  }

  private options: IPanelOptions;
  private timer: number | null = null;
  private _recordings: IRecordingInfo[] = [];
  private _selected: string | null = null;
  private _compare: string[] = [];
  private rows = new Map<string, HTMLTableRowElement>();
  private searchText = new Map<string, string>();
  private search = '';
  private sortColumn: Column = 'created';
  private sortDescending = true;
  private visibleCount = 0;
  private shown = PAGE;
  private loadedText = '';
  private refreshButton: HTMLButtonElement;
  private refreshes = 0;
  private searchInput: HTMLInputElement;
  private diffButton: HTMLButtonElement;
  private statusNode: HTMLElement;
  private errorNode: HTMLElement;
  private listBox: HTMLElement;
  private headRow: HTMLTableRowElement;
  private listNode: HTMLTableSectionElement;
  private detailsNode: HTMLElement;
}

/** A failure: one line of cause, the traceback folded away in a scrollable monospace block. */
function showFailure(result: HTMLElement, state: string, cause: string, traceback: string): void {
  result.dataset.state = state;
  result.replaceChildren(
    h('strong', '', state === 'error' ? 'error' : 'not verified'),
    h('span', 'jp-JuliusRecordings-cause', ` — ${cause}`)
  );
  if (traceback) {
    const fold = h('details', 'jp-JuliusRecordings-traceback');
    fold.appendChild(h('summary', '', 'remote traceback'));
    fold.appendChild(h('pre', '', traceback));
    result.appendChild(fold);
  }
}

/** A table with a header row; every value goes in as text. */
function grid(header: string[], rows: string[][], className = ''): HTMLTableElement {
  const node = h('table', `jp-JuliusRecordings-grid ${className}`.trim());
  const head = h('tr');
  for (const title of header) {
    head.appendChild(h('th', '', title));
  }
  node.appendChild(head);
  for (const row of rows) {
    const tr = h('tr');
    for (const value of row) {
      tr.appendChild(h('td', '', value));
    }
    node.appendChild(tr);
  }
  return node;
}

/** Key/value rows; every value goes in as text. */
function table(rows: [string, string][]): HTMLTableElement {
  const node = h('table', 'jp-JuliusRecordings-table');
  for (const [key, value] of rows) {
    if (value === '') {
      continue;
    }
    const row = h('tr');
    row.append(h('th', '', key), h('td', '', value));
    node.appendChild(row);
  }
  return node;
}

function infoTable(info: IRecordingInfo, details: IRecordingDetails | null): HTMLTableElement {
  const meta = details?.meta ?? {};
  const who = [meta.user, meta.host].filter(Boolean).join('@');
  return table([
    ['created', formatCreated(info.created)],
    ['status', info.status],
    ['steps', String(info.steps)],
    ['size', formatSize(info.size)],
    ['workers', info.workers === null ? '' : String(info.workers)],
    ['data', info.data_mode === 'hash' ? 'hashes only' : info.data_mode ? 'embedded' : ''],
    [
      'signed',
      info.signed_by_me === null ? '' : info.signed_by_me ? 'by your key' : `by another key (${info.key_id ?? 'unknown'})`
    ],
    ['recorded by', who],
    ['julius', meta.julius_version ? String(meta.julius_version) : '']
  ]);
}

/** A folding section with a title and some content. */
function section(key: string, title: string, content: HTMLElement, open = false): HTMLElement {
  const node = h('details', 'jp-JuliusRecordings-section');
  node.dataset.key = key;
  node.open = open;
  node.append(h('summary', '', title), content);
  return node;
}

function lines(items: string[]): HTMLElement {
  const list = h('ol', 'jp-JuliusRecordings-sectionList');
  for (const item of items) {
    list.appendChild(h('li', '', item));
  }
  return list;
}

/** The sections of `describe()`: results, steps (the server's summaries), environment, data. */
function appendDetails(body: HTMLElement, details: IRecordingDetails): void {
  body.appendChild(
    section(
      'results',
      `results (${details.results.length})`,
      lines(details.results.map(r => `${r.label || r.node}: ${formatValue(r.describe)}`)),
      true
    )
  );
  body.appendChild(
    section(
      'steps',
      `steps (${details.steps.length})`,
      lines(details.steps.map(s => `${s.seq}. ${s.kind} — ${s.summary}`)),
      true
    )
  );
  const env = details.environment;
  if (env) {
    const workers =
      env.workers === 0
        ? 'no workers recorded'
        : `${plural(env.workers, 'worker')}, ${env.workers_same_as_kernel ? 'the same as the kernel' : 'different from the kernel'}`;
    body.appendChild(
      section(
        'environment',
        'environment',
        h('div', 'jp-JuliusRecordings-sentence',
          `Python ${env.python ?? '?'} on ${env.os ?? '?'} ${env.release ?? ''}, ` +
            `${plural(env.packages, 'package')}; ${workers}`)
      )
    );
  }
  if (details.data.length > 0) {
    body.appendChild(
      section(
        'data',
        `input files (${details.data.length})`,
        lines(
          details.data.map(
            f => `${f.path} — ${formatSize(f.size)}, ${f.embedded ? 'embedded' : 'hash only'}, sha256 ${shortHash(f.sha256)}`
          )
        )
      )
    );
  }
  const verification = details.verification;
  if (verification) {
    const text = Object.entries(verification)
      .filter(([, v]) => v !== null && typeof v !== 'object')
      .map(([k, v]) => `${k.replace(/_/g, ' ')}: ${v}`)
      .join(' · ');
    body.appendChild(section('verification', 'last verification', h('div', 'jp-JuliusRecordings-sentence', text)));
  }
}

/** The differences of two recordings as one table, the content of `julius diff`. */
export function renderDiff(d: IDiff): HTMLElement {
  const box = h('div', 'jp-JuliusRecordings-diffBody');
  box.appendChild(
    h('div', `jp-JuliusRecordings-diffVerdict ${d.same ? 'jp-mod-same' : 'jp-mod-differs'}`,
      d.same ? 'no differences' : 'differences')
  );
  const rows: { what: string; item: string; a: string; b: string; text?: string }[] = [];
  for (const [kind, text] of Object.entries(d.code)) {
    rows.push({ what: 'code', item: kind, a: '', b: '', text });
  }
  for (const [ns, text] of Object.entries(d.rules)) {
    rows.push({ what: 'rules', item: ns, a: '', b: '', text });
  }
  for (const [name, [a, b]] of Object.entries(d.parameters)) {
    rows.push({ what: 'parameter', item: name, a: valueText(a), b: valueText(b) });
  }
  for (const f of d.data) {
    if (f.same_content) {
      rows.push({ what: 'data', item: 'same content, moved', a: f.a ?? '', b: f.b ?? '' });
    } else {
      rows.push({
        what: 'data',
        item: f.a === f.b ? f.a ?? '' : [f.a, f.b].filter(Boolean).join(' → '),
        a: f.sha_a ? `sha256 ${shortHash(f.sha_a)}` : 'absent',
        b: f.sha_b ? `sha256 ${shortHash(f.sha_b)}` : 'absent'
      });
    }
  }
  const env = d.environment ?? {};
  for (const sectionName of ['python', 'os', 'machine']) {
    for (const [name, pair] of Object.entries((env[sectionName] ?? {}) as { [k: string]: unknown[] })) {
      rows.push({ what: 'environment', item: `${sectionName} ${name}`, a: valueText(pair[0]), b: valueText(pair[1]) });
    }
  }
  for (const sectionName of ['packages', 'dask_config']) {
    const changes = (env[sectionName] ?? {}) as { [k: string]: any };
    for (const [name, version] of Object.entries(changes.added ?? {})) {
      rows.push({ what: sectionName === 'packages' ? 'package' : 'dask config', item: name, a: 'absent', b: valueText(version) });
    }
    for (const [name, version] of Object.entries(changes.removed ?? {})) {
      rows.push({ what: sectionName === 'packages' ? 'package' : 'dask config', item: name, a: valueText(version), b: 'absent' });
    }
    for (const [name, pair] of Object.entries(changes.changed ?? {})) {
      const [a, b] = Array.isArray(pair) ? pair : [pair, ''];
      rows.push({ what: sectionName === 'packages' ? 'package' : 'dask config', item: name, a: valueText(a), b: valueText(b) });
    }
  }
  if (env.same === false && !rows.some(r => r.what === 'environment' || r.what === 'package' || r.what === 'dask config')) {
    rows.push({ what: 'environment', item: 'recorded in only one of them', a: '', b: '' });
  }
  for (const [key, r] of Object.entries(d.results)) {
    // equal descriptions of different values: the fingerprints tell them apart
    const same = r.a !== null && r.a === r.b;
    rows.push({
      what: 'result',
      item: r.label || key,
      a: formatValue(r.a) + (same ? ` · ${shortHash(r.fp_a)}` : ''),
      b: formatValue(r.b) + (same ? ` · ${shortHash(r.fp_b)}` : '')
    });
  }
  if (rows.length === 0) {
    return box;
  }
  const node = h('table', 'jp-JuliusRecordings-grid jp-JuliusRecordings-diffTable');
  const head = h('tr');
  for (const title of ['', '', d.a, d.b]) {
    head.appendChild(h('th', '', title));
  }
  node.appendChild(head);
  for (const row of rows) {
    const tr = h('tr');
    tr.dataset.what = row.what;
    tr.append(h('th', '', row.what), h('td', '', row.item));
    if (row.text !== undefined) {
      const cell = h('td', 'jp-JuliusRecordings-codeCell');
      cell.colSpan = 2;
      cell.appendChild(h('pre', 'jp-JuliusRecordings-code', row.text.trimEnd()));
      tr.appendChild(cell);
    } else {
      tr.append(h('td', '', row.a), h('td', '', row.b));
    }
    node.appendChild(tr);
  }
  box.appendChild(node);
  return box;
}

function valueText(value: unknown): string {
  if (value === null || value === undefined) {
    return 'absent';
  }
  if (typeof value === 'object') {
    return Object.entries(value as object)
      .map(([k, v]) => `${k}: ${Array.isArray(v) ? v.join(', ') : String(v)}`)
      .join('; ');
  }
  return String(value);
}
