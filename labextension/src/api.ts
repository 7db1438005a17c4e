import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

/*
 * The JSON of the server's answers. Each interface marked "Mirrors Python ..."
 * lists the fields of that Python model field for field;
 * tests/server/test_interfaces.py compares them with JSON the Python side emits.
 */

/** One recording's summary. Mirrors Python `RecordingInfo.as_dict()`. */
export interface IRecordingInfo {
  name: string;
  created: string | null;
  steps: number;
  size: number;
  workers: number | null;
  status: string; // 'complete' | 'incomplete' | 'partial' | 'verified'
  note: string | null;
  data_mode: string | null;
  key_id: string | null;
  signed_by_me: boolean | null;
  /** Signed by you or by a key you trust. */
  trusted: boolean;
  /** Headline results: label → value of the recording's labelled targets. */
  results: { [label: string]: string };
}

/** One journal step. Mirrors Python `summary.details()["steps"][i]`. */
export interface IStepSummary {
  seq: number;
  kind: string;
  /** One line written by the server for this step's kind: the sidebar never switches on kinds. */
  summary: string;
}

/** Mirrors Python `summary.details()["environment"]`. */
export interface IEnvironmentSummary {
  python: string | null;
  os: string | null;
  release: string | null;
  packages: number;
  workers: number;
  workers_same_as_kernel: boolean;
}

/** One input file. Mirrors Python `summary.details()["data"][i]`. */
export interface IDataFile {
  path: string;
  size: number;
  sha256: string;
  embedded: boolean;
}

/** One recorded result. Mirrors Python `summary.details()["results"][i]`. */
export interface IRecordedResult {
  node: string;
  label: string | null;
  fp: string;
  describe: string | null;
}

/** Who signed a recording. Mirrors Python `summary.signer()`. */
export interface ISigner {
  key_id: string;
  by_me: boolean;
  trusted: boolean;
  /** "you", or the name given in your trusted keys. */
  name: string | null;
}

/** `GET /julius/api/recordings/NAME`. Mirrors Python `summary.details()`. */
export interface IRecordingDetails {
  info: IRecordingInfo;
  signer: ISigner;
  meta: { [key: string]: unknown };
  steps: IStepSummary[];
  environment: IEnvironmentSummary | null;
  data: IDataFile[];
  results: IRecordedResult[];
  /** The most workers a recorded cluster had (scaled while recording); null when none joined. */
  most_workers: number | null;
  /** Results a replay compares: a key computed in several graphs is listed once, compared at each. */
  results_recorded: number;
  verification: { [key: string]: unknown } | null;
}

/** `GET /julius/api/recordings/NAME` answers `{info, details}`. */
export interface IRecordingReply {
  info: IRecordingInfo;
  details: IRecordingDetails;
}

/** One differing result of a replay. Mirrors Python `ReplayReport.mismatches[i]`. */
export interface IMismatch {
  node: string;
  label: string | null;
  recorded: string;
  replayed: string | null;
  recorded_value: string | null;
  replayed_value: string | null;
  cause: string;
}

/** Mirrors Python `ReplayReport.as_dict()`. */
export interface IReplayReport {
  name: string;
  steps: number;
  total_steps: number;
  complete: boolean;
  verified: boolean;
  results: number;
  mismatches: IMismatch[];
  env_diff: { [key: string]: unknown };
  data: { path: string; status: string }[];
  timings: { [key: string]: number };
  /** Recorded scheduler address -> the worker counts its cluster was scaled to, in turn. */
  scaled: { [address: string]: string[] };
}

/** Mirrors Python `ReplayProcess.as_dict()` (julius_magics/server/manager.py). */
export interface IReplayJob {
  id: string;
  name: string;
  workers: number | null;
  state: 'running' | 'verified' | 'failed' | 'error';
  done: number;
  total: number;
  message: string;
  report: IReplayReport | null;
  started: number;
  finished: number | null;
}

/** One input file that differs. Mirrors Python `diff()["data"][i]`. */
export interface IDataDiff {
  a: string | null;
  b: string | null;
  sha_a: string | null;
  sha_b: string | null;
  same_content: boolean;
}

/** One result that differs. Mirrors Python `diff()["results"][key]`. */
export interface IResultDiff {
  label: string | null;
  node_a: string | null;
  node_b: string | null;
  a: string | null;
  b: string | null;
  fp_a: string | null;
  fp_b: string | null;
}

/** `GET /julius/api/diff?a=&b=`. Mirrors Python `diff()`, what `julius diff` prints. */
export interface IDiff {
  a: string;
  b: string;
  code: { [kind: string]: string };
  rules: { [ns: string]: string };
  parameters: { [name: string]: [unknown, unknown] };
  data: IDataDiff[];
  environment: { [section: string]: any };
  results: { [key: string]: IResultDiff };
  same: boolean;
}

/** An HTTP error of the Julius API, with the server's status and message. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string
  ) {
    super(message);
  }
}

/**
 * Call the julius_magics server extension.
 *
 * @param endPoint - path under `/julius/api/`, e.g. `recordings`
 * @param init - fetch options (method, body)
 * @returns the decoded JSON body (`undefined` for 204)
 * @throws {ApiError} status 0 when the server is unreachable, 404 when the
 *   server extension is missing, else the status and message of the server
 */
export async function requestAPI<T>(
  endPoint = '',
  init: RequestInit = {}
): Promise<T> {
  const settings = ServerConnection.makeSettings();
  const url = URLExt.join(settings.baseUrl, 'julius', 'api', endPoint);
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url, init, settings);
  } catch (error) {
    throw new ApiError(0, `Jupyter server unreachable: ${error}`);
  }
  const text = await response.text();
  let data: any = undefined;
  if (text.length > 0) {
    try {
      data = JSON.parse(text);
    } catch {
      data = text;
    }
  }
  if (!response.ok) {
    const message =
      (data && typeof data === 'object' && data.message) ||
      response.statusText ||
      `HTTP ${response.status}`;
    throw new ApiError(response.status, String(message));
  }
  return data as T;
}
