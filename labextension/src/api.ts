import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

/** One recording's summary: mirrors Python `RecordingInfo.as_dict()`. */
export interface IRecordingInfo {
  name: string;
  created: string | null;
  steps: number;
  size: number;
  workers: number | null;
  status: 'complete' | 'incomplete' | 'verified' | 'damaged';
  note: string | null;
  data_mode: string | null;
  key_id: string | null;
  signed_by_me: boolean | null;
}

/** `GET /julius/api/recordings/NAME`: the summary and `inspect.describe()`. */
export interface IRecordingDetails {
  info: IRecordingInfo;
  details: { [key: string]: unknown };
}

/** One differing result: mirrors an entry of `ReplayReport.mismatches`. */
export interface IMismatch {
  node_id?: string;
  label?: string;
  recorded?: string;
  replayed?: string;
  cause?: string;
  [key: string]: unknown;
}

/** Mirrors Python `ReplayReport.as_dict()`. */
export interface IReplayReport {
  name: string;
  steps: number;
  verified: boolean;
  mismatches: IMismatch[];
  env_diff: { [key: string]: unknown };
  timings: { [key: string]: number };
}

/** Mirrors Python `ReplayJob.as_dict()` (julius_magics/server/manager.py). */
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
