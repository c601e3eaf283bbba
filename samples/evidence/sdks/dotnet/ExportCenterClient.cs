using System;
using System.Collections.Generic;
using System.IO;
using System.Net.Http;
using System.Net.Http.Headers;
using System.Net.Http.Json;
using System.Runtime.CompilerServices;
using System.Text.Json;
using System.Threading;
using System.Threading.Tasks;

namespace Acme.ExportCenter;

public sealed record Profile(string Id, string Name, IReadOnlyList<string> Formats);

public sealed record Artifact(string Name, string Sha256, long? Size);

public sealed record Run(string RunId, string ProfileId, string Status, DateTimeOffset CreatedAt,
    DateTimeOffset? FinishedAt, IReadOnlyList<Artifact>? Artifacts);

public sealed record RunRequest(string ProfileId, IReadOnlyList<string>? Products = null, bool Sign = true);

public sealed record RunEvent(string RunId, long Seq, string Type, DateTimeOffset At, double? Progress,
    Artifact? Artifact, JsonElement? Error);

public sealed class ExportCenterClient
{
    private static readonly JsonSerializerOptions Json = new(JsonSerializerDefaults.Web);
    private readonly HttpClient _http;

    public ExportCenterClient(HttpClient http, string? token = null)
    {
        _http = http ?? throw new ArgumentNullException(nameof(http));
        if (token is not null)
        {
            _http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", token);
        }
    }

    public async Task<IReadOnlyList<Profile>> ListProfilesAsync(CancellationToken ct = default) =>
        await _http.GetFromJsonAsync<List<Profile>>("export-center/profiles", Json, ct).ConfigureAwait(false)
        ?? new List<Profile>();

    public async Task<Run> CreateRunAsync(RunRequest request, CancellationToken ct = default)
    {
        using var resp = await _http.PostAsJsonAsync("export-center/runs", request, Json, ct).ConfigureAwait(false);
        resp.EnsureSuccessStatusCode();
        return (await resp.Content.ReadFromJsonAsync<Run>(Json, ct).ConfigureAwait(false))!;
    }

    public async Task<Run> GetRunAsync(string runId, CancellationToken ct = default) =>
        (await _http.GetFromJsonAsync<Run>($"export-center/runs/{Uri.EscapeDataString(runId)}", Json, ct)
            .ConfigureAwait(false))!;

    public async IAsyncEnumerable<RunEvent> StreamEventsAsync(string runId,
        [EnumeratorCancellation] CancellationToken ct = default)
    {
        using var req = new HttpRequestMessage(HttpMethod.Get,
            $"export-center/runs/{Uri.EscapeDataString(runId)}/events");
        req.Headers.Accept.Add(new MediaTypeWithQualityHeaderValue("text/event-stream"));
        using var resp = await _http.SendAsync(req, HttpCompletionOption.ResponseHeadersRead, ct)
            .ConfigureAwait(false);
        resp.EnsureSuccessStatusCode();
        using var reader = new StreamReader(await resp.Content.ReadAsStreamAsync(ct).ConfigureAwait(false));
        var data = new List<string>();
        string? line;
        while ((line = await reader.ReadLineAsync(ct).ConfigureAwait(false)) is not null)
        {
            if (line.StartsWith("data:", StringComparison.Ordinal))
            {
                data.Add(line[5..].TrimStart());
            }
            else if (line.Length == 0 && data.Count > 0)
            {
                var ev = JsonSerializer.Deserialize<RunEvent>(string.Join("\n", data), Json)!;
                data.Clear();
                yield return ev;
                if (ev.Type is "run.succeeded" or "run.failed" or "run.cancelled")
                {
                    yield break;
                }
            }
        }
    }
}
